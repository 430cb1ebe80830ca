//! The feedback body of `POST /v2/models/{m}/feedback`: `{"feedback": [item, ...]}` or a bare
//! list of items, each `{"id", "row"?, "label"? | "target"?, "time"?}`.
//!
//! Parsed by visitors that check every limit as they go — the number of items, each id's and
//! label's size, the ranges of `row`, `target` and `time` — so nothing is built past a limit and
//! no `serde_json::Value` is built at all: the decoded items stay within a small multiple of the
//! body, and a body of many items is refused at the first item over the cap. Each error names
//! the item and the field (`feedback[3].label: ...`) and says what was expected.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use cairn_core::request::MAX_ID_BYTES;
use cairn_monitor::feedback::FeedbackItem;

use super::ProtocolError;

/// Most items in one call.
pub const MAX_FEEDBACK_ROWS: usize = 100_000;
/// The longest label, in bytes: a class name, not a document. The quality windows keep every
/// label of their rows, so this bounds their memory too.
pub const MAX_LABEL_BYTES: usize = 256;
/// How far past the server's clock a `time` may be, in seconds: clocks disagree, but not by
/// days. Earlier than the Unix epoch is refused too.
pub const MAX_TIME_AHEAD_S: u64 = 24 * 3600;

/// Decodes a feedback body; `now_us` (the server's clock) bounds `time`.
pub fn decode_feedback(body: &[u8], now_us: i64) -> Result<Vec<FeedbackItem>, ProtocolError> {
    let latest_s = (now_us.max(0) as u64 / 1_000_000).saturating_add(MAX_TIME_AHEAD_S);
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = de
        .deserialize_any(Body { latest_s })
        .and_then(|items| de.end().map(|()| items))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ProtocolError::Feedback(e.to_string()),
            _ => ProtocolError::Feedback(format!(
                "malformed feedback JSON ({e}); expected {BODY_SHAPE}"
            )),
        })?;
    Ok(items)
}

const BODY_SHAPE: &str =
    r#"{"feedback": [{"id", "row", "label" or "target", "time"}, ...]} or a list of such items"#;

/// The whole body: the wrapped form or a bare list.
struct Body {
    latest_s: u64,
}

impl<'de> Visitor<'de> for Body {
    type Value = Vec<FeedbackItem>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BODY_SHAPE)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Items {
            latest_s: self.latest_s,
        }
        .visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = None;
        while let Some(key) = map.next_key_seed(Key {
            at: "the body",
            names: &["feedback"],
        })? {
            debug_assert_eq!(key, 0);
            if items.is_some() {
                return Err(de::Error::custom("'feedback' is given twice"));
            }
            items = Some(map.next_value_seed(Items {
                latest_s: self.latest_s,
            })?);
        }
        items.ok_or_else(|| de::Error::custom(format!("missing 'feedback'; expected {BODY_SHAPE}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "expected {BODY_SHAPE}, got {}",
            StrOf(v.len())
        )))
    }
}

/// The list of items, at most [`MAX_FEEDBACK_ROWS`].
struct Items {
    latest_s: u64,
}

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<FeedbackItem>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items {
    type Value = Vec<FeedbackItem>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'feedback' to be a list of at most {MAX_FEEDBACK_ROWS} items"
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The size hint is the client's: it sizes nothing beyond a small start.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            if out.len() == MAX_FEEDBACK_ROWS {
                // One more item, skipped without building it, is one too many.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_FEEDBACK_ROWS} feedback items in one call (the limit); \
                         send them in several calls"
                    )));
                }
                return Ok(out);
            }
            let item = Item {
                index: out.len(),
                latest_s: self.latest_s,
            };
            match seq.next_element_seed(item)? {
                Some(item) => out.push(item),
                None => return Ok(out),
            }
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "expected 'feedback' to be a list of at most {MAX_FEEDBACK_ROWS} items, got {}",
            StrOf(v.len())
        )))
    }
}

/// One item, `feedback[index]`.
struct Item {
    index: usize,
    latest_s: u64,
}

const FIELDS: &[&str] = &["id", "row", "label", "target", "time"];
const ID: usize = 0;
const ROW: usize = 1;
const LABEL: usize = 2;
const TARGET: usize = 3;
const TIME: usize = 4;

impl<'de> DeserializeSeed<'de> for Item {
    type Value = FeedbackItem;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item {
    type Value = FeedbackItem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an object {"id", "row", "label" or "target", "time"}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let at = format!("feedback[{}]", self.index);
        let mut seen = [false; FIELDS.len()];
        let mut item = FeedbackItem {
            id: String::new(),
            row: 0,
            label: None,
            target: None,
            time_us: None,
        };
        while let Some(field) = map.next_key_seed(Key {
            at: &at,
            names: FIELDS,
        })? {
            if std::mem::replace(&mut seen[field], true) {
                return Err(de::Error::custom(format!(
                    "{at}.{}: given twice",
                    FIELDS[field]
                )));
            }
            let value = map.next_value_seed(Field {
                at: &at,
                field,
                latest_s: self.latest_s,
            })?;
            match value {
                Parsed::Id(id) => item.id = id,
                Parsed::Row(row) => item.row = row,
                Parsed::Label(label) => item.label = label,
                Parsed::Target(target) => item.target = target,
                Parsed::Time(time_us) => item.time_us = time_us,
            }
        }
        if !seen[ID] {
            return Err(de::Error::custom(format!(
                "{at}: missing 'id' (the id of the request it is the truth for)"
            )));
        }
        if item.label.is_none() && item.target.is_none() {
            return Err(de::Error::custom(format!(
                "{at}: has neither 'label' nor 'target'"
            )));
        }
        Ok(item)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Err(self.refuse(&v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(self.refuse(&v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(self.refuse(&v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Err(self.refuse(&v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(self.refuse(&StrOf(v.len())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.refuse(&"null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.refuse(&"a list"))
    }
}

impl Item {
    fn refuse<E: de::Error>(&self, got: &dyn fmt::Display) -> E {
        de::Error::custom(format!(
            r#"feedback[{}]: expected an object {{"id", "row", "label" or "target", "time"}}, got {got}"#,
            self.index
        ))
    }
}

/// A key of an object, one of `names` (its index); any other is refused, naming the known ones.
struct Key<'a> {
    at: &'a str,
    names: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "one of {}", self.names.join(", "))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.names.iter().position(|n| *n == v).ok_or_else(|| {
            // Echoed only when short: a key is the client's and may be anything.
            let name = if v.len() <= 64 { v } else { "(a long key)" };
            E::custom(format!(
                "{}: unknown field '{name}'; expected {}",
                self.at,
                self.names.join(", ")
            ))
        })
    }
}

/// One field's value, as parsed.
enum Parsed {
    Id(String),
    Row(u32),
    Label(Option<String>),
    Target(Option<f64>),
    Time(Option<i64>),
}

/// The value of `FIELDS[field]` of item `at`, checked against its limit before anything is
/// allocated for it.
struct Field<'a> {
    at: &'a str,
    field: usize,
    latest_s: u64,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_any(self)
    }
}

impl Field<'_> {
    /// What the field takes, for errors.
    fn expected(&self) -> String {
        match self.field {
            ID => format!("a non-empty string of at most {MAX_ID_BYTES} bytes"),
            ROW => format!("an integer from 0 to {}", u32::MAX),
            LABEL => format!("a string of at most {MAX_LABEL_BYTES} bytes, a number or a boolean"),
            TARGET => "a number".into(),
            _ => format!(
                "seconds since the Unix epoch, from 0 to {} (the server's clock + {} h)",
                self.latest_s,
                MAX_TIME_AHEAD_S / 3600
            ),
        }
    }

    fn refuse<E: de::Error>(&self, got: &dyn fmt::Display) -> E {
        E::custom(format!(
            "{}.{}: expected {}, got {got}",
            self.at,
            FIELDS[self.field],
            self.expected()
        ))
    }

    /// `time`, in seconds, as microseconds: finite and within range.
    fn time<E: de::Error>(&self, seconds: f64) -> Result<Parsed, E> {
        if !(seconds.is_finite() && seconds >= 0.0 && seconds <= self.latest_s as f64) {
            return Err(self.refuse(&seconds));
        }
        Ok(Parsed::Time(Some((seconds * 1e6) as i64)))
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expected())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed, E> {
        match self.field {
            ID if !v.is_empty() && v.len() <= MAX_ID_BYTES => Ok(Parsed::Id(v.to_string())),
            LABEL if v.len() <= MAX_LABEL_BYTES => Ok(Parsed::Label(Some(v.to_string()))),
            _ => Err(self.refuse(&StrOf(v.len()))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed, E> {
        match self.field {
            ROW => u32::try_from(v)
                .map(Parsed::Row)
                .map_err(|_| self.refuse(&v)),
            LABEL => Ok(Parsed::Label(Some(v.to_string()))),
            TARGET => Ok(Parsed::Target(Some(v as f64))),
            TIME => self.time(v as f64),
            _ => Err(self.refuse(&v)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed, E> {
        match self.field {
            LABEL => Ok(Parsed::Label(Some(v.to_string()))),
            TARGET => Ok(Parsed::Target(Some(v as f64))),
            TIME => self.time(v as f64),
            _ => Err(self.refuse(&v)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed, E> {
        match self.field {
            // A whole number is written as an integer, as the prediction side writes a class
            // (`0.0` from a pandas float column is class `0`); others as JSON writes them
            // (2.5, 1e300), so a float class reads back the same.
            LABEL if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 => {
                Ok(Parsed::Label(Some((v as i64).to_string())))
            }
            LABEL if v.is_finite() => Ok(Parsed::Label(
                serde_json::Number::from_f64(v).map(|n| n.to_string()),
            )),
            TARGET if v.is_finite() => Ok(Parsed::Target(Some(v))),
            TIME => self.time(v),
            _ => Err(self.refuse(&v)),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed, E> {
        match self.field {
            LABEL => Ok(Parsed::Label(Some(u8::from(v).to_string()))),
            _ => Err(self.refuse(&v)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Parsed, E> {
        match self.field {
            LABEL => Ok(Parsed::Label(None)),
            TARGET => Ok(Parsed::Target(None)),
            TIME => Ok(Parsed::Time(None)),
            _ => Err(self.refuse(&"null")),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Parsed, A::Error> {
        Err(self.refuse(&"a list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Parsed, A::Error> {
        Err(self.refuse(&"an object"))
    }
}

/// A string described by its size: a client's string is never echoed (serde's own
/// `invalid type` errors would echo it whole, so every visitor here overrides `visit_str`).
struct StrOf(usize);

impl fmt::Display for StrOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("a string of 1 byte"),
            n => write!(f, "a string of {n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T23:07:38Z.
    const NOW_US: i64 = 1_796_166_458_000_000;

    fn decode(body: &str) -> Result<Vec<FeedbackItem>, String> {
        decode_feedback(body.as_bytes(), NOW_US).map_err(|e| e.to_string())
    }

    fn refused(body: &str, expected: &[&str]) {
        let err = decode(body).expect_err(body);
        for part in expected {
            assert!(err.contains(part), "{body}: {err}");
        }
    }

    #[test]
    fn both_forms_and_every_field() {
        let items = r#"[{"id": "a", "row": 2, "label": "cat", "time": 1796166458.5},
            {"id": "b", "label": 3}, {"id": "c", "label": true}, {"id": "d", "label": 2.5},
            {"id": "e", "target": -1.25, "label": null, "time": null}, {"id": "f", "label": -7}]"#;
        for body in [items.to_string(), format!(r#"{{"feedback": {items}}}"#)] {
            let got = decode(&body).unwrap();
            assert_eq!(got.len(), 6);
            assert_eq!(
                got[0],
                FeedbackItem {
                    id: "a".into(),
                    row: 2,
                    label: Some("cat".into()),
                    target: None,
                    time_us: Some(1_796_166_458_500_000),
                }
            );
            let labels: Vec<_> = got.iter().map(|i| i.label.as_deref()).collect();
            assert_eq!(
                labels,
                [
                    Some("cat"),
                    Some("3"),
                    Some("1"),
                    Some("2.5"),
                    None,
                    Some("-7")
                ]
            );
            assert_eq!(got[4].target, Some(-1.25));
            assert_eq!(got[4].time_us, None);
        }
        assert!(decode("[]").unwrap().is_empty());
        assert!(decode(r#"{"feedback": []}"#).unwrap().is_empty());
    }

    /// Class 0 sent as `0`, `0.0` (a pandas float column), `"0"` or `false` is one label, the
    /// one the prediction side writes.
    #[test]
    fn a_class_compares_by_value() {
        let body = r#"[{"id": "a", "label": 0}, {"id": "b", "label": 0.0},
            {"id": "c", "label": "0"}, {"id": "d", "label": false}, {"id": "e", "label": -2.0}]"#;
        let labels: Vec<_> = decode(body)
            .unwrap()
            .into_iter()
            .map(|i| i.label.unwrap())
            .collect();
        assert_eq!(labels, ["0", "0", "0", "0", "-2"]);
    }

    #[test]
    fn errors_name_the_item_and_the_field() {
        let label = "x".repeat(MAX_LABEL_BYTES + 1);
        let id = "i".repeat(MAX_ID_BYTES + 1);
        for (body, expected) in [
            (
                r#"[{"id": "a", "label": 1}, {"id": "b", "label": 1, "time": 1e12}]"#.to_string(),
                vec![
                    "feedback[1].time: expected seconds since the Unix epoch",
                    "got 1000000000000",
                ],
            ),
            (
                r#"[{"id": "a", "label": 1, "time": -1}]"#.into(),
                vec!["feedback[0].time", "got -1"],
            ),
            (
                format!(r#"[{{"id": "a", "label": "{label}"}}]"#),
                vec![
                    "feedback[0].label: expected a string of at most 256 bytes",
                    "got a string of 257 bytes",
                ],
            ),
            (
                format!(r#"{{"feedback": [{{"id": "{id}", "label": 1}}]}}"#),
                vec!["feedback[0].id: expected a non-empty string of at most 1024 bytes"],
            ),
            (
                r#"[{"id": "", "label": 1}]"#.into(),
                vec!["feedback[0].id", "a string of 0 bytes"],
            ),
            (
                r#"[{"id": 7, "label": 1}]"#.into(),
                vec!["feedback[0].id", "got 7"],
            ),
            (
                r#"[{"id": "a", "label": [1]}]"#.into(),
                vec!["feedback[0].label", "got a list"],
            ),
            (
                r#"[{"id": "a", "label": {"a": 1}}]"#.into(),
                vec!["feedback[0].label", "got an object"],
            ),
            (
                r#"[{"id": "a", "target": "x"}]"#.into(),
                vec!["feedback[0].target: expected a number"],
            ),
            (
                r#"[{"id": "a", "row": -1, "label": 1}]"#.into(),
                vec!["feedback[0].row: expected an integer from 0 to 4294967295"],
            ),
            (
                r#"[{"id": "a", "row": 4294967296, "label": 1}]"#.into(),
                vec!["feedback[0].row"],
            ),
            (
                r#"[{"id": "a", "row": 1.5, "label": 1}]"#.into(),
                vec!["feedback[0].row"],
            ),
            (
                r#"[{"id": "a"}]"#.into(),
                vec!["feedback[0]: has neither 'label' nor 'target'"],
            ),
            (
                r#"[{"label": 1}]"#.into(),
                vec!["feedback[0]: missing 'id'"],
            ),
            (
                r#"[{"id": "a", "label": 1, "id": "b"}]"#.into(),
                vec!["feedback[0].id: given twice"],
            ),
            (
                r#"[{"id": "a", "label": 1, "colour": 1}]"#.into(),
                vec!["feedback[0]: unknown field 'colour'; expected id, row, label, target, time"],
            ),
            (
                r#"[{"id": "a", "label": 1}, 5]"#.into(),
                vec!["feedback[1]: expected an object", "got 5"],
            ),
            (
                r#"{"items": []}"#.into(),
                vec!["unknown field 'items'; expected feedback"],
            ),
            (r#"{}"#.into(), vec!["missing 'feedback'"]),
            (r#"{"feedback": 3}"#.into(), vec!["'feedback' to be a list"]),
            (
                r#""text""#.into(),
                vec![r#"{"feedback": [{"id""#, "got a string of 4 bytes"],
            ),
            (
                r#"{"feedback": "text"}"#.into(),
                vec!["'feedback' to be a list", "got a string of 4 bytes"],
            ),
            (
                r#"[{"id": "a", "label": 1}"#.into(),
                vec!["malformed feedback JSON"],
            ),
            (r#"[] []"#.into(), vec!["malformed feedback JSON"]),
        ] {
            refused(&body, &expected);
        }
    }

    #[test]
    fn time_is_bounded_by_the_clock() {
        let latest = NOW_US / 1_000_000 + MAX_TIME_AHEAD_S as i64;
        let at = |t: i64| format!(r#"[{{"id": "a", "label": 1, "time": {t}}}]"#);
        assert_eq!(
            decode(&at(latest)).unwrap()[0].time_us,
            Some(latest * 1_000_000)
        );
        refused(&at(latest + 1), &["feedback[0].time"]);
        assert_eq!(decode(&at(0)).unwrap()[0].time_us, Some(0));
    }

    #[test]
    fn the_item_cap_is_checked_while_parsing() {
        let item = r#"{"id":"a","label":1}"#;
        let at_cap = format!("[{}]", vec![item; MAX_FEEDBACK_ROWS].join(","));
        assert_eq!(decode(&at_cap).unwrap().len(), MAX_FEEDBACK_ROWS);
        // Past the cap the rest is never parsed: the error comes even though it is malformed.
        let over = format!(
            "[{},{item},{item} this is never read",
            vec![item; MAX_FEEDBACK_ROWS].join(",")
        );
        refused(
            &over,
            &["more than 100000 feedback items in one call (the limit)"],
        );
    }
}
