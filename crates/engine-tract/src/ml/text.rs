//! Text features as onnxruntime computes them, for the pipelines skl2onnx writes for
//! `TfidfVectorizer` and `CountVectorizer`: `StringNormalizer` (case and stop words),
//! onnxruntime's `com.microsoft` `Tokenizer` (a token expression, separators, or characters) and
//! `TfIdfVectorizer` (n-grams with skips over a string or integer pool; TF, IDF or TFIDF).
//!
//! Regular expressions: onnxruntime runs RE2 with leftmost-longest matching and ASCII `\w`, `\d`,
//! `\s`, `\b`; Rust's `regex` matches leftmost-first with Unicode classes. The two agree on
//! patterns without alternation, lazy or grouped repetition, Perl classes, word boundaries and
//! flags (skl2onnx's default `[a-zA-Z0-9_]+` and its separators among them); any other pattern
//! is refused at load rather than tokenized differently. No tract here.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use regex_syntax::ast::{self, Ast};

use super::common::{invalid, unsupported, BuildError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    None,
    Lower,
    Upper,
}

impl Case {
    pub fn parse(s: &str) -> Result<Case, String> {
        Ok(match s {
            "NONE" => Case::None,
            "LOWER" => Case::Lower,
            "UPPER" => Case::Upper,
            other => return Err(format!("unknown case_change_action '{other}'")),
        })
    }

    /// One character at a time, as the C library's `towlower`/`towupper` do: the full Unicode
    /// mapping where it is one character (a lower-case expansion keeps its first character, an
    /// upper-case one leaves the character as it is).
    fn apply(self, s: &str) -> String {
        match self {
            Case::None => s.to_string(),
            Case::Lower => s
                .chars()
                .map(|c| c.to_lowercase().next().unwrap_or(c))
                .collect(),
            Case::Upper => s
                .chars()
                .map(|c| {
                    let mut up = c.to_uppercase();
                    match (up.next(), up.next()) {
                        (Some(u), None) => u,
                        _ => c,
                    }
                })
                .collect(),
        }
    }
}

/// `StringNormalizer` (ai.onnx opset 10).
#[derive(Debug)]
pub struct StringNormalizer {
    case: Case,
    /// The case stop words are compared in; `None` when the comparison is case-sensitive.
    compare: Option<Case>,
    stopwords: HashSet<String>,
}

impl StringNormalizer {
    pub fn build(
        case: Case,
        case_sensitive: bool,
        stopwords: Vec<String>,
    ) -> Result<StringNormalizer, BuildError> {
        let compare = (!case_sensitive).then_some(if case == Case::Upper {
            Case::Upper
        } else {
            Case::Lower
        });
        let mut set = HashSet::new();
        for w in stopwords {
            if w.is_empty() {
                return Err(invalid("stopwords", "holds an empty stop word"));
            }
            let w = compare.map_or(w.clone(), |c| c.apply(&w));
            if !set.insert(w) {
                return Err(invalid("stopwords", "holds a stop word twice"));
            }
        }
        Ok(StringNormalizer {
            case,
            compare,
            stopwords: set,
        })
    }

    /// Each string with its case changed. onnxruntime drops the strings that are stop words,
    /// which changes how many there are: a batch whose strings are rows cannot be split per
    /// request any more, so that is an error here.
    pub fn run(&self, x: &[String]) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(x.len());
        let mut dropped = 0;
        for s in x {
            if !self.stopwords.is_empty() {
                let key = match self.compare {
                    Some(c) => c.apply(s),
                    None => s.clone(),
                };
                if self.stopwords.contains(&key) {
                    dropped += 1;
                    continue;
                }
            }
            out.push(self.case.apply(s));
        }
        if dropped > 0 {
            return Err(format!(
                "StringNormalizer: {dropped} of {} input strings are stop words, which \
                 onnxruntime removes, answering with fewer rows than were sent",
                x.len()
            ));
        }
        Ok(out)
    }
}

/// How a `Tokenizer` splits.
#[derive(Debug)]
enum Split {
    Chars,
    Separators(Vec<Regex>),
    Expression(Regex),
}

/// `Tokenizer` (com.microsoft opset 1).
#[derive(Debug)]
pub struct Tokenizer {
    mark: bool,
    pad: String,
    mincharnum: usize,
    split: Split,
}

impl Tokenizer {
    pub fn build(
        mark: bool,
        pad: String,
        mincharnum: i64,
        separators: Option<Vec<String>>,
        tokenexp: Option<String>,
    ) -> Result<Tokenizer, BuildError> {
        let mincharnum = usize::try_from(mincharnum)
            .ok()
            .filter(|&m| m > 0)
            .ok_or_else(|| invalid("mincharnum", format!("{mincharnum} is not positive")))?;
        let split = match (separators, tokenexp) {
            (Some(seps), _) => {
                if seps.is_empty() {
                    return Err(invalid("separators", "is empty"));
                }
                if seps.len() == 1 && seps[0].is_empty() {
                    Split::Chars
                } else {
                    let mut compiled = Vec::with_capacity(seps.len());
                    for s in &seps {
                        let r = pattern("separators", s)?;
                        if r.is_match("") {
                            return Err(unsupported(
                                "separators",
                                format!("'{s}' matches the empty string"),
                            ));
                        }
                        compiled.push(r);
                    }
                    Split::Separators(compiled)
                }
            }
            (None, Some(exp)) if exp == "." => Split::Chars,
            (None, Some(exp)) if !exp.is_empty() => Split::Expression(pattern("tokenexp", &exp)?),
            (None, _) => {
                return Err(invalid(
                    "tokenexp",
                    "neither separators nor a non-empty tokenexp is set",
                ))
            }
        };
        if matches!(split, Split::Chars) && mincharnum > 1 {
            return Err(invalid(
                "mincharnum",
                "is above 1 for a character tokenizer",
            ));
        }
        Ok(Tokenizer {
            mark,
            pad,
            mincharnum,
            split,
        })
    }

    /// Each string's tokens, padded to the longest row: `(tokens, tokens per string)`. A batch
    /// without a single token has zero tokens per string (and no marks).
    pub fn run(&self, x: &[String]) -> (Vec<String>, usize) {
        let rows: Vec<Vec<&str>> = x.iter().map(|s| self.tokens(s)).collect();
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 {
            return (Vec::new(), 0);
        }
        let width = longest + if self.mark { 2 } else { 0 };
        let mut out = Vec::with_capacity(rows.len() * width);
        for row in rows {
            if self.mark {
                out.push("\u{2}".to_string());
            }
            let n = row.len();
            out.extend(row.into_iter().map(str::to_string));
            if self.mark {
                out.push("\u{3}".to_string());
            }
            out.extend(std::iter::repeat_n(self.pad.clone(), longest - n));
        }
        (out, width)
    }

    fn tokens<'s>(&self, s: &'s str) -> Vec<&'s str> {
        let long_enough = |t: &str| t.chars().count() >= self.mincharnum;
        match &self.split {
            Split::Chars => s
                .char_indices()
                .map(|(i, c)| &s[i..i + c.len_utf8()])
                .collect(),
            Split::Expression(re) => {
                let mut row = Vec::new();
                if !long_enough(s) {
                    return row;
                }
                let mut start = 0;
                while start <= s.len() {
                    let Some(m) = re.find_at(s, start) else { break };
                    if long_enough(m.as_str()) {
                        row.push(m.as_str());
                        start = m.end();
                    } else {
                        start = m.start() + char_len(s, m.start());
                    }
                }
                row
            }
            Split::Separators(seps) => {
                let mut row = vec![s];
                for sep in seps {
                    let mut tokens = Vec::new();
                    for text in &row {
                        let mut start = 0;
                        loop {
                            match sep.find_at(text, start) {
                                Some(m) => {
                                    let token = &text[start..m.start()];
                                    if long_enough(token) {
                                        tokens.push(token);
                                    }
                                    start = m.end();
                                }
                                None => {
                                    let token = &text[start..];
                                    if long_enough(token) {
                                        tokens.push(token);
                                    }
                                    break;
                                }
                            }
                        }
                    }
                    if tokens.is_empty() {
                        return Vec::new();
                    }
                    row = tokens;
                }
                row
            }
        }
    }
}

/// The byte length of the character at `at` (1 past the end, as onnxruntime steps).
fn char_len(s: &str, at: usize) -> usize {
    s[at..].chars().next().map_or(1, char::len_utf8)
}

/// Compiles a pattern that RE2 (leftmost-longest, ASCII classes) and `regex` match alike, or
/// refuses it naming the construct.
fn pattern(attribute: &'static str, p: &str) -> Result<Regex, BuildError> {
    let parsed = ast::parse::Parser::new()
        .parse(p)
        .map_err(|e| invalid(attribute, format!("'{p}' is not a regular expression: {e}")))?;
    if let Some(why) = disagreement(&parsed) {
        return Err(unsupported(
            attribute,
            format!(
                "'{p}' uses {why}, where RE2 (onnxruntime) and Rust's regex could tokenize \
                 differently"
            ),
        ));
    }
    Regex::new(p).map_err(|e| invalid(attribute, format!("'{p}': {e}")))
}

/// The first construct of `a` that RE2 and `regex` may match differently.
fn disagreement(a: &Ast) -> Option<&'static str> {
    match a {
        Ast::Empty(_) | Ast::Literal(_) | Ast::Dot(_) => None,
        Ast::Flags(_) => Some("inline flags"),
        Ast::Assertion(x) => match x.kind {
            ast::AssertionKind::StartLine
            | ast::AssertionKind::EndLine
            | ast::AssertionKind::StartText
            | ast::AssertionKind::EndText => None,
            _ => Some("a word boundary"),
        },
        Ast::ClassUnicode(_) => Some("a Unicode class"),
        Ast::ClassPerl(_) => Some("a Perl class (\\w, \\d, \\s)"),
        Ast::ClassBracketed(c) => set_disagreement(&c.kind),
        Ast::Repetition(r) => {
            if !r.greedy {
                return Some("a lazy repetition");
            }
            match &*r.ast {
                Ast::Literal(_) | Ast::Dot(_) => None,
                Ast::ClassBracketed(c) => set_disagreement(&c.kind),
                Ast::ClassPerl(_) => Some("a Perl class (\\w, \\d, \\s)"),
                Ast::ClassUnicode(_) => Some("a Unicode class"),
                _ => Some("a repeated group"),
            }
        }
        Ast::Group(g) => match g.kind {
            ast::GroupKind::NonCapturing(_) => Some("inline flags"),
            _ => disagreement(&g.ast),
        },
        Ast::Alternation(_) => Some("alternation"),
        Ast::Concat(c) => c.asts.iter().find_map(disagreement),
    }
}

fn set_disagreement(set: &ast::ClassSet) -> Option<&'static str> {
    match set {
        ast::ClassSet::BinaryOp(op) => set_disagreement(&op.lhs).or(set_disagreement(&op.rhs)),
        ast::ClassSet::Item(item) => item_disagreement(item),
    }
}

fn item_disagreement(item: &ast::ClassSetItem) -> Option<&'static str> {
    match item {
        ast::ClassSetItem::Empty(_)
        | ast::ClassSetItem::Literal(_)
        | ast::ClassSetItem::Range(_)
        | ast::ClassSetItem::Ascii(_) => None,
        ast::ClassSetItem::Unicode(_) => Some("a Unicode class"),
        ast::ClassSetItem::Perl(_) => Some("a Perl class (\\w, \\d, \\s)"),
        ast::ClassSetItem::Bracketed(b) => set_disagreement(&b.kind),
        ast::ClassSetItem::Union(u) => u.items.iter().find_map(item_disagreement),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weighting {
    Tf,
    Idf,
    TfIdf,
}

impl Weighting {
    pub fn parse(s: &str) -> Result<Weighting, String> {
        Ok(match s {
            "TF" => Weighting::Tf,
            "IDF" => Weighting::Idf,
            "TFIDF" => Weighting::TfIdf,
            other => return Err(format!("unknown mode '{other}'")),
        })
    }
}

/// The n-gram pool: strings or integers.
#[derive(Clone, Debug)]
pub enum Pool {
    Str(Vec<String>),
    Int(Vec<i64>),
}

/// The attributes of a `TfIdfVectorizer` node.
pub struct TfIdfAttributes {
    pub mode: Weighting,
    pub min_gram_length: i64,
    pub max_gram_length: i64,
    pub max_skip_count: i64,
    pub ngram_counts: Vec<i64>,
    pub ngram_indexes: Vec<i64>,
    pub weights: Vec<f32>,
    pub pool: Pool,
}

/// `TfIdfVectorizer` (ai.onnx opset 9). Pool items are interned: an n-gram is the list of its
/// items' ids, and an input item outside the pool ends every n-gram through it.
#[derive(Debug)]
pub struct TfIdf {
    mode: Weighting,
    min: usize,
    max: usize,
    max_skip: usize,
    /// Output column of each n-gram id.
    indexes: Vec<usize>,
    /// Indexed by output column, as onnxruntime reads them.
    weights: Vec<f32>,
    width: usize,
    strings: HashMap<String, u32>,
    ints: HashMap<i64, u32>,
    ngrams: HashMap<Vec<u32>, usize>,
    pub string_pool: bool,
}

fn as_usize(name: &'static str, v: i64) -> Result<usize, BuildError> {
    usize::try_from(v).map_err(|_| invalid(name, format!("{v} is negative")))
}

/// The pool as interned ids, one per pool entry: a string or an integer is given the id of its
/// first occurrence (in `strings` or `ints`), so that n-grams compare as lists of ids.
fn intern_pool(
    pool: &Pool,
    strings: &mut HashMap<String, u32>,
    ints: &mut HashMap<i64, u32>,
) -> Result<Vec<u32>, BuildError> {
    Ok(match pool {
        Pool::Str(p) => {
            if p.is_empty() {
                return Err(invalid("pool_strings", "is empty"));
            }
            p.iter()
                .map(|s| {
                    let next = strings.len() as u32;
                    *strings.entry(s.clone()).or_insert(next)
                })
                .collect()
        }
        Pool::Int(p) => {
            if p.is_empty() {
                return Err(invalid("pool_int64s", "is empty"));
            }
            p.iter()
                .map(|&v| {
                    let next = ints.len() as u32;
                    *ints.entry(v).or_insert(next)
                })
                .collect()
        }
    })
}

/// The n-gram id of each n-gram of the pool whose length is in `lengths`. Ids count every
/// n-gram of the pool, in pool order, as `ngram_indexes` does (`columns` of them).
fn index_ngrams(
    ngram_counts: &[i64],
    items: &[u32],
    lengths: std::ops::RangeInclusive<usize>,
    columns: usize,
) -> Result<HashMap<Vec<u32>, usize>, BuildError> {
    let mut ngrams = HashMap::new();
    let mut id = 0usize;
    for (k, &start) in ngram_counts.iter().enumerate() {
        let n = k + 1;
        let start = as_usize("ngram_counts", start)?;
        let end = match ngram_counts.get(k + 1) {
            Some(&e) => as_usize("ngram_counts", e)?,
            None => items.len(),
        };
        if end < start || end > items.len() || (end - start) % n != 0 {
            return Err(invalid(
                "ngram_counts",
                format!("the {n}-grams from {start} to {end} are not whole {n}-grams of the pool"),
            ));
        }
        for gram in items[start..end].chunks_exact(n) {
            if lengths.contains(&n) {
                if id >= columns {
                    return Err(invalid(
                        "ngram_indexes",
                        format!("has no output column for n-gram {id}"),
                    ));
                }
                if ngrams.insert(gram.to_vec(), id).is_some() {
                    return Err(invalid("pool_strings", format!("holds a {n}-gram twice")));
                }
            }
            id += 1;
        }
    }
    Ok(ngrams)
}

impl TfIdf {
    pub fn build(a: TfIdfAttributes) -> Result<TfIdf, BuildError> {
        let min = as_usize("min_gram_length", a.min_gram_length)?;
        let max = as_usize("max_gram_length", a.max_gram_length)?;
        let max_skip = as_usize("max_skip_count", a.max_skip_count)?;
        if min == 0 || max < min {
            return Err(invalid(
                "max_gram_length",
                format!("the n-gram lengths {min}..={max} are not a positive range"),
            ));
        }
        if a.ngram_counts.is_empty() || max > a.ngram_counts.len() {
            return Err(invalid(
                "ngram_counts",
                format!(
                    "{} starts where n-grams up to {max} are read",
                    a.ngram_counts.len()
                ),
            ));
        }
        if a.ngram_indexes.is_empty() {
            return Err(invalid("ngram_indexes", "is empty"));
        }
        let indexes = a
            .ngram_indexes
            .iter()
            .map(|&i| as_usize("ngram_indexes", i))
            .collect::<Result<Vec<_>, _>>()?;
        let width = indexes.iter().max().map_or(0, |m| m + 1);
        if !a.weights.is_empty() && a.weights.len() != indexes.len() {
            return Err(invalid(
                "weights",
                format!(
                    "{} weights for {} n-gram indexes",
                    a.weights.len(),
                    indexes.len()
                ),
            ));
        }
        if !a.weights.is_empty() && width > a.weights.len() {
            return Err(unsupported(
                "weights",
                format!(
                    "onnxruntime reads a weight per output column ({width}) and there are {}",
                    a.weights.len()
                ),
            ));
        }
        let mut strings = HashMap::new();
        let mut ints = HashMap::new();
        let items = intern_pool(&a.pool, &mut strings, &mut ints)?;
        let string_pool = matches!(a.pool, Pool::Str(_));
        let ngrams = index_ngrams(&a.ngram_counts, &items, min..=max, indexes.len())?;
        Ok(TfIdf {
            mode: a.mode,
            min,
            max,
            max_skip,
            indexes,
            weights: a.weights,
            width,
            strings,
            ints,
            ngrams,
            string_pool,
        })
    }

    /// Output columns per row.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn run_strings(&self, x: &[String], row_len: usize, out: &mut [f32]) {
        let ids: Vec<Option<u32>> = x.iter().map(|s| self.strings.get(s).copied()).collect();
        self.run(&ids, row_len, out);
    }

    pub fn run_ints(&self, x: impl Iterator<Item = i64>, row_len: usize, out: &mut [f32]) {
        let ids: Vec<Option<u32>> = x.map(|v| self.ints.get(&v).copied()).collect();
        self.run(&ids, row_len, out);
    }

    /// `ids` is `rows × row_len` interned items; `out` is `rows × width()`.
    fn run(&self, ids: &[Option<u32>], row_len: usize, out: &mut [f32]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        let rows = out.len() / self.width.max(1);
        let mut counts = vec![0u32; self.width];
        let mut sample = Vec::with_capacity(self.max);
        for r in 0..rows {
            counts.iter_mut().for_each(|c| *c = 0);
            let row = if row_len == 0 {
                &[][..]
            } else {
                &ids[r * row_len..(r + 1) * row_len]
            };
            let mut count = |sample: &[u32]| {
                if let Some(&id) = self.ngrams.get(sample) {
                    counts[self.indexes[id]] += 1;
                }
            };
            let mut start_size = self.min;
            if start_size == 1 {
                for item in row.iter().flatten() {
                    count(std::slice::from_ref(item));
                }
                start_size = 2;
            }
            if start_size <= self.max {
                for skip in 1..=self.max_skip + 1 {
                    for begin in 0..row.len() {
                        if begin + skip * (start_size - 1) >= row.len() {
                            break;
                        }
                        sample.clear();
                        let mut at = begin;
                        let mut size = 1;
                        while size <= self.max && at < row.len() {
                            let Some(item) = row[at] else { break };
                            sample.push(item);
                            if size >= start_size {
                                count(&sample);
                            }
                            size += 1;
                            at += skip;
                        }
                    }
                }
            }
            let out = &mut out[r * self.width..(r + 1) * self.width];
            for (i, (o, &c)) in out.iter_mut().zip(&counts).enumerate() {
                *o = match self.mode {
                    Weighting::Tf => c as f32,
                    Weighting::Idf if self.weights.is_empty() => f32::from(u8::from(c > 0)),
                    Weighting::Idf => {
                        if c > 0 {
                            self.weights[i]
                        } else {
                            0.0
                        }
                    }
                    Weighting::TfIdf if self.weights.is_empty() => c as f32,
                    Weighting::TfIdf => c as f32 * self.weights[i],
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_skl2onnx_expression_tokenizes_words() {
        let t = Tokenizer::build(false, "#".into(), 1, None, Some("[a-zA-Z0-9_]+".into())).unwrap();
        let (out, width) = t.run(&strings(&["the cat, sat!", "dog"]));
        assert_eq!(width, 3);
        assert_eq!(out, strings(&["the", "cat", "sat", "dog", "#", "#"]));
    }

    #[test]
    fn patterns_re2_could_match_otherwise_are_refused() {
        for p in [r"\w+", "a|ab", r"(ab)+", r"\bx", "a+?", "(?i)a"] {
            let e = Tokenizer::build(false, "#".into(), 1, None, Some(p.into())).unwrap_err();
            assert!(e.unsupported, "{p}: {e}");
        }
    }

    #[test]
    fn separators_split_in_turn() {
        let t = Tokenizer::build(true, "#".into(), 1, Some(strings(&[" ", "[.]"])), None).unwrap();
        let (out, width) = t.run(&strings(&["a.b c", "d"]));
        assert_eq!(width, 5);
        assert_eq!(
            out,
            strings(&["\u{2}", "a", "b", "c", "\u{3}", "\u{2}", "d", "\u{3}", "#", "#"])
        );
    }

    #[test]
    fn tfidf_counts_unigrams_and_bigrams() {
        let t = TfIdf::build(TfIdfAttributes {
            mode: Weighting::TfIdf,
            min_gram_length: 1,
            max_gram_length: 2,
            max_skip_count: 0,
            ngram_counts: vec![0, 2],
            ngram_indexes: vec![1, 0, 2],
            weights: vec![2.0, 3.0, 4.0],
            pool: Pool::Str(strings(&["a", "b", "a", "b"])),
        })
        .unwrap();
        let mut out = [0f32; 3];
        t.run_strings(&strings(&["a", "b", "a", "x"]), 4, &mut out);
        // a twice (column 1), b once (column 0), "a b" once (column 2).
        assert_eq!(out, [2.0, 6.0, 4.0]);
    }

    #[test]
    fn stop_words_that_would_remove_a_row_fail_the_call() {
        let n = StringNormalizer::build(Case::Lower, false, strings(&["The"])).unwrap();
        assert_eq!(n.run(&strings(&["AbC"])).unwrap(), strings(&["abc"]));
        assert!(n.run(&strings(&["the"])).is_err());
    }
}
