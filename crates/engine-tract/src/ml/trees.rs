//! Tree ensembles (`ai.onnx.ml` `TreeEnsembleClassifier` and `TreeEnsembleRegressor`, opsets 1
//! and 3) evaluated exactly as onnxruntime evaluates them: its aggregation, its base values, its
//! post transforms and its special cases for binary classifiers, because onnxruntime's answers
//! are what every exporter's users compare against.
//!
//! This module owns the flat forest and its evaluation; it knows nothing of tract or ONNX
//! protobuf (`ops.rs` reads the attributes and wires the op). Whatever it cannot answer as
//! onnxruntime does, it refuses when the ensemble is built, never at run time with a guess.
//!
//! Layout: nodes are stored as parallel arrays (feature, threshold, the two successors, mode,
//! missing-goes-true) indexed by their position in the ONNX node list; a leaf is a node whose
//! successors are itself, so a walk of a tree's depth in steps ends on its leaf with no test for
//! leaves on the way. A leaf owns a range of (target, weight) pairs. Each tree is its root index
//! and its depth. Evaluation takes a block of rows tree by tree and advances eight rows through a
//! tree in lockstep, each step a load of the successor by index rather than a branch; a call of
//! fewer rows walks each tree with branches. Accumulators are per call: nothing is allocated
//! per row or per tree.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use super::common::{invalid, logistic, probit, transform, unsupported};
pub use super::common::{BuildError, Labels, PostTransform};

/// `leaf_of` of an internal node.
const NOT_LEAF: u32 = u32::MAX;

/// Set on a successor (and a root) that is a leaf, so that a walk knows it has arrived
/// without loading anything more.
const LEAF_BIT: u32 = 1 << 31;

/// Rows evaluated together, tree by tree. onnxruntime uses 128; at 64 the accumulators of a
/// block (64 × classes) stay in L1 for the class counts exporters produce.
const BLOCK_ROWS: usize = 64;

/// Walks advanced together, one step each in turn: independent chains of loads that the CPU
/// overlaps, where one walk alone waits on each node before the next.
const LANES: usize = 8;

/// How a node compares its feature with its threshold (ONNX `nodes_modes`, without `LEAF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    /// Parses one `nodes_modes` entry: `None` is `LEAF`.
    pub fn parse(s: &str) -> Result<Option<Mode>, String> {
        Ok(Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => return Ok(None),
            other => return Err(format!("unknown node mode '{other}'")),
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub fn parse(s: &str) -> Result<Aggregate, String> {
        Ok(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return Err(format!("unknown aggregate_function '{other}'")),
        })
    }
}

/// What the ensemble computes: class scores and a label, or regression targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    Classifier {
        labels: Labels,
    },
    Regressor {
        n_targets: usize,
        aggregate: Aggregate,
    },
}

/// The attributes of one node, already read from the protobuf, in ONNX's parallel-array form.
/// Values are widened to `f64` (exactly, from `FLOATS`); `double` says whether onnxruntime would
/// compute in double (a double input or `*_as_tensor` attributes of doubles).
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub nodes_treeids: Vec<i64>,
    pub nodes_nodeids: Vec<i64>,
    pub nodes_featureids: Vec<i64>,
    pub nodes_values: Vec<f64>,
    pub nodes_modes: Vec<Option<Mode>>,
    pub nodes_truenodeids: Vec<i64>,
    pub nodes_falsenodeids: Vec<i64>,
    pub nodes_missing_value_tracks_true: Vec<i64>,
    /// `class_*` or `target_*`.
    pub leaf_treeids: Vec<i64>,
    pub leaf_nodeids: Vec<i64>,
    pub leaf_ids: Vec<i64>,
    pub leaf_weights: Vec<f64>,
    pub base_values: Vec<f64>,
    pub post_transform: Option<PostTransform>,
    pub double: bool,
}

/// The label a classifier picked for a row: an index into its labels, or one of onnxruntime's
/// literal 0 / 1 (a two-class model with weights on both classes answers 1 when the second
/// class scores above 0 and 0 otherwise, whatever its labels are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Class(usize),
    Literal(i64),
}

/// A built ensemble: immutable, shared by every session.
#[derive(Clone, Debug)]
pub struct Ensemble {
    pub head: Head,
    forest: Forest,
    base_values: Vec<f64>,
    post_transform: PostTransform,
    /// Scores per row: classes or targets.
    width: usize,
    /// The highest feature index any node reads.
    max_feature: usize,
    /// Classifier: the weights name one class only (onnxruntime's `binary_case_`).
    binary_case: bool,
    /// Classifier: no weight is negative (onnxruntime's `weights_are_all_positive_`).
    weights_positive: bool,
}

#[derive(Clone, Debug)]
enum Forest {
    F32(Trees<f32>),
    F64(Trees<f64>),
}

/// An input in one of the two precisions an ensemble computes in.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

#[derive(Clone, Debug)]
struct Trees<T> {
    /// Per node (leaves too: feature 0, never read to any effect).
    feature: Vec<u32>,
    threshold: Vec<T>,
    /// Two per node: the true then the false successor, with [`LEAF_BIT`] set on leaves. A
    /// leaf's are itself.
    children: Vec<u32>,
    mode: Vec<Mode>,
    missing_true: Vec<bool>,
    /// Per node: its leaf number, or [`NOT_LEAF`].
    leaf_of: Vec<u32>,
    roots: Vec<u32>,
    /// Per tree: the steps from its root to its deepest leaf.
    depth: Vec<u32>,
    /// onnxruntime's `value_or_unique_weight` of a leaf: its first weight, or its own
    /// `nodes_values` entry when it has none. The one-target regressor adds only this.
    leaf_first: Vec<T>,
    /// Weights of leaf `l`: `leaf_start[l]..leaf_start[l + 1]`.
    leaf_start: Vec<u32>,
    weight_target: Vec<u32>,
    weight_value: Vec<T>,
    /// Every internal node compares the same way: the walk is specialised on it.
    uniform: Option<Mode>,
    has_missing: bool,
}

impl Ensemble {
    /// Builds and checks the forest. Everything that onnxruntime would refuse, and everything
    /// whose answer onnxruntime leaves undefined, is an error here.
    pub fn build(attrs: &Attributes, head: Head) -> Result<Ensemble, BuildError> {
        check_lengths(attrs, &head)?;
        let width = score_width(&head)?;
        let index = NodeIndex::new(attrs)?;
        let weights = LeafWeights::group(attrs, &index, &head, width)?;
        let nodes = Nodes::read(attrs, &index, &weights.per_leaf)?;

        let roots: Vec<u32> = index.roots.iter().map(|&i| i as u32).collect();
        let depth = depths(&roots, &nodes.children, &index.leaf_of)?;
        let tag = |node: u32| {
            if index.leaf_of[node as usize] == NOT_LEAF {
                node
            } else {
                node | LEAF_BIT
            }
        };
        let children: Vec<u32> = nodes.children.into_iter().map(tag).collect();
        let roots: Vec<u32> = roots.into_iter().map(tag).collect();
        let (leaf_start, weight_target, weight_value) = weights.flatten();

        let post_transform = attrs.post_transform.unwrap_or(PostTransform::None);
        let binary_case = matches!(head, Head::Classifier { .. })
            && width == 2
            && weights.classes_named.len() == 1;
        check_base_values(
            &head,
            width,
            attrs.base_values.len(),
            post_transform,
            binary_case,
            &weights.per_leaf,
        )?;

        let trees = Trees {
            feature: nodes.feature,
            threshold: nodes.threshold,
            children,
            mode: nodes.mode,
            missing_true: nodes.missing_true,
            leaf_of: index.leaf_of,
            roots,
            depth,
            leaf_first: nodes.leaf_first,
            leaf_start,
            weight_target,
            weight_value,
            uniform: nodes.uniform,
            has_missing: attrs
                .nodes_missing_value_tracks_true
                .iter()
                .any(|&v| v != 0),
        };
        let forest = if attrs.double {
            Forest::F64(trees)
        } else {
            Forest::F32(trees.narrow())
        };
        Ok(Ensemble {
            head,
            forest,
            base_values: attrs.base_values.clone(),
            post_transform,
            width,
            max_feature: nodes.max_feature,
            binary_case,
            weights_positive: weights.positive,
        })
    }

    /// Scores per row (classes or targets).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether the computation is in double (the input is then widened to `f64`).
    pub fn is_double(&self) -> bool {
        matches!(self.forest, Forest::F64(_))
    }

    pub fn trees(&self) -> usize {
        match &self.forest {
            Forest::F32(t) => t.roots.len(),
            Forest::F64(t) => t.roots.len(),
        }
    }

    /// The fewest input features a row must have.
    pub fn min_features(&self) -> usize {
        self.max_feature + 1
    }

    /// Evaluates `rows` rows of `features` values each (`x` row-major, already converted to
    /// the ensemble's precision: see [`Ensemble::is_double`]). Writes `rows × width` scores and,
    /// for a classifier, one pick per row.
    pub fn run(
        &self,
        x: Rows,
        features: usize,
        scores: &mut [f32],
        picks: &mut [Pick],
    ) -> Result<(), String> {
        match (&self.forest, x) {
            (Forest::F32(t), Rows::F32(x)) => self.run_trees(t, x, features, scores, picks),
            (Forest::F64(t), Rows::F64(x)) => self.run_trees(t, x, features, scores, picks),
            (Forest::F64(_), Rows::F32(_)) => Err("this ensemble computes in double".into()),
            (Forest::F32(_), Rows::F64(_)) => {
                Err("this ensemble computes in single precision".into())
            }
        }
    }

    fn run_trees<T: Float>(
        &self,
        trees: &Trees<T>,
        x: &[T],
        features: usize,
        scores: &mut [f32],
        picks: &mut [Pick],
    ) -> Result<(), String> {
        if features < self.min_features() {
            return Err(format!(
                "the trees read feature {} but the input has {features} features",
                self.max_feature
            ));
        }
        let rows = x.len() / features;
        if x.len() != rows * features || scores.len() != rows * self.width {
            return Err("input and output sizes do not agree".into());
        }
        let classifier = matches!(self.head, Head::Classifier { .. });
        if classifier && picks.len() != rows {
            return Err("one label per row is needed".into());
        }
        let (aggregate, single) = match self.head {
            Head::Classifier { .. } => (Aggregate::Sum, false),
            Head::Regressor { aggregate, .. } => (aggregate, self.width == 1),
        };
        let base: Vec<T> = self.base_values.iter().map(|&v| T::from_f64(v)).collect();
        let k = self.width;
        let block = BLOCK_ROWS.min(rows.max(1));
        let mut acc = vec![T::ZERO; block * k];
        let mut has = vec![false; block * k];
        for start in (0..rows).step_by(BLOCK_ROWS) {
            let end = (start + BLOCK_ROWS).min(rows);
            let n = end - start;
            acc[..n * k].fill(T::ZERO);
            has[..n * k].fill(false);
            let block_x = &x[start * features..end * features];
            trees.accumulate(block_x, features, aggregate, single, k, &mut acc, &mut has);
            for r in 0..n {
                let a = &mut acc[r * k..(r + 1) * k];
                let h = &mut has[r * k..(r + 1) * k];
                let out = &mut scores[(start + r) * k..(start + r + 1) * k];
                if classifier {
                    picks[start + r] = self.finish_class(a, h, &base, out);
                } else {
                    self.finish_target(a, h, &base, aggregate, trees.roots.len(), out);
                }
            }
        }
        Ok(())
    }

    /// onnxruntime's `TreeAggregatorClassifier::FinalizeScores` and `write_scores`.
    fn finish_class<T: Float>(
        &self,
        acc: &mut [T],
        has: &mut [bool],
        base: &[T],
        out: &mut [f32],
    ) -> Pick {
        let value = |a: T, h: bool| if h { a.to_f32() } else { 0.0 };
        if self.width > 2 {
            for (k, &b) in base.iter().enumerate() {
                if has[k] {
                    acc[k] = acc[k] + b;
                } else {
                    has[k] = true;
                    acc[k] = b;
                }
            }
            let mut best: Option<usize> = None;
            for k in 0..self.width {
                if has[k] && best.is_none_or(|b| acc[k] > acc[b]) {
                    best = Some(k);
                }
            }
            for k in 0..self.width {
                out[k] = value(acc[k], has[k]);
            }
            transform(self.post_transform, out);
            // Build checked that a classifier without base values has weights on every leaf.
            return Pick::Class(best.unwrap_or(0));
        }

        // Two classes.
        let mut second = true;
        let mut add_second: i8 = -1;
        match base.len() {
            2 => {
                if has[1] {
                    // onnxruntime's own reading: base_values[0] is ignored and the first
                    // class's score replaces the second's.
                    acc[1] = base[1] + acc[0];
                    acc[0] = T::ZERO - acc[1];
                } else {
                    acc[1] = acc[1] + base[1];
                    acc[0] = acc[0] + base[0];
                }
            }
            1 => {
                acc[0] = acc[0] + base[0];
                second = has[1];
            }
            _ => {
                add_second = 3;
                second = has[1];
            }
        }
        let positive = if second && has[1] {
            acc[1]
        } else if has[0] {
            acc[0]
        } else {
            T::ZERO
        };
        let pick = if self.binary_case {
            let (wins, code) = if self.weights_positive {
                (positive > T::HALF, 0)
            } else {
                (positive > T::ZERO, 2)
            };
            add_second = if wins { code } else { code + 1 };
            Pick::Class(wins as usize)
        } else {
            Pick::Literal((positive > T::ZERO) as i64)
        };
        if second {
            out[0] = value(acc[0], has[0]);
            out[1] = value(acc[1], has[1]);
            transform(self.post_transform, out);
            return pick;
        }
        let s = value(acc[0], has[0]);
        match add_second {
            0 | 1 => {
                out[0] = 1.0 - s;
                out[1] = s;
            }
            _ if self.post_transform == PostTransform::Logistic => {
                out[0] = logistic(-s);
                out[1] = logistic(s);
            }
            _ => {
                // Build refused the combinations where onnxruntime leaves this unwritten.
                out[0] = -s;
                out[1] = s;
            }
        }
        pick
    }

    /// onnxruntime's regression aggregators' `FinalizeScores1` / `FinalizeScores`.
    fn finish_target<T: Float>(
        &self,
        acc: &mut [T],
        has: &[bool],
        base: &[T],
        aggregate: Aggregate,
        trees: usize,
        out: &mut [f32],
    ) {
        let n_trees = T::from_f64(trees as f64);
        if self.width == 1 {
            let origin = if base.len() == 1 { base[0] } else { T::ZERO };
            let score = match aggregate {
                Aggregate::Sum => acc[0] + origin,
                Aggregate::Average => acc[0] / n_trees + origin,
                Aggregate::Min | Aggregate::Max if has[0] => acc[0] + origin,
                Aggregate::Min | Aggregate::Max => origin,
            };
            // One target: only PROBIT applies.
            out[0] = if self.post_transform == PostTransform::Probit {
                probit(score.to_f32())
            } else {
                score.to_f32()
            };
            return;
        }
        let use_base = base.len() == self.width;
        for k in 0..self.width {
            let b = if use_base { base[k] } else { T::ZERO };
            let a = match aggregate {
                Aggregate::Sum => acc[k] + b,
                Aggregate::Average => acc[k] / n_trees + b,
                Aggregate::Min | Aggregate::Max if has[k] => acc[k] + b,
                Aggregate::Min | Aggregate::Max => b,
            };
            // A target no tree scored reads 0, base value or not, as in onnxruntime.
            out[k] = if has[k] { a.to_f32() } else { 0.0 };
        }
        transform(self.post_transform, out);
    }
}

impl Trees<f64> {
    /// The same forest in single precision (onnxruntime's float `ThresholdType`).
    fn narrow(self) -> Trees<f32> {
        let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        Trees {
            feature: self.feature,
            threshold: narrow(self.threshold),
            children: self.children,
            mode: self.mode,
            missing_true: self.missing_true,
            leaf_of: self.leaf_of,
            roots: self.roots,
            depth: self.depth,
            leaf_first: narrow(self.leaf_first),
            leaf_start: self.leaf_start,
            weight_target: self.weight_target,
            weight_value: narrow(self.weight_value),
            uniform: self.uniform,
            has_missing: self.has_missing,
        }
    }
}

impl<T: Float> Trees<T> {
    /// Adds every tree's leaf for every row of the block into `acc` / `has` (`width` per row).
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        x: &[T],
        features: usize,
        aggregate: Aggregate,
        single: bool,
        width: usize,
        acc: &mut [T],
        has: &mut [bool],
    ) {
        macro_rules! walk_with {
            ($cmp:ty) => {
                if self.has_missing {
                    self.accumulate_with::<$cmp, true>(
                        x, features, aggregate, single, width, acc, has,
                    )
                } else {
                    self.accumulate_with::<$cmp, false>(
                        x, features, aggregate, single, width, acc, has,
                    )
                }
            };
        }
        match self.uniform {
            Some(Mode::Leq) => walk_with!(Leq),
            Some(Mode::Lt) => walk_with!(Lt),
            Some(Mode::Gte) => walk_with!(Gte),
            Some(Mode::Gt) => walk_with!(Gt),
            Some(Mode::Eq) => walk_with!(Equal),
            Some(Mode::Neq) => walk_with!(NotEqual),
            None => walk_with!(PerNode),
        }
    }

    /// Each tree's leaf for each row, added in tree order for each row as onnxruntime adds
    /// them: `LANES` rows of a block through one tree at a time, in lockstep.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_with<C: Compare, const MISSING: bool>(
        &self,
        x: &[T],
        features: usize,
        aggregate: Aggregate,
        single: bool,
        width: usize,
        acc: &mut [T],
        has: &mut [bool],
    ) {
        let rows = x.len() / features;
        let mut add_leaf = |row: usize, node: u32| {
            let leaf = self.leaf_of[(node & !LEAF_BIT) as usize] as usize;
            if single {
                add(
                    aggregate,
                    &mut acc[row],
                    &mut has[row],
                    self.leaf_first[leaf],
                    false,
                );
                return;
            }
            let range = self.leaf_start[leaf] as usize..self.leaf_start[leaf + 1] as usize;
            let a = &mut acc[row * width..(row + 1) * width];
            let h = &mut has[row * width..(row + 1) * width];
            for (&t, &v) in self.weight_target[range.clone()]
                .iter()
                .zip(&self.weight_value[range])
            {
                add(aggregate, &mut a[t as usize], &mut h[t as usize], v, true);
            }
        };
        let mut cur = [0u32; LANES];
        let mut at = [0usize; LANES];
        if rows >= LANES {
            for (&root, &depth) in self.roots.iter().zip(&self.depth) {
                for first in (0..rows).step_by(LANES) {
                    let n = LANES.min(rows - first);
                    cur[..n].fill(root);
                    for (l, a) in at[..n].iter_mut().enumerate() {
                        *a = (first + l) * features;
                    }
                    self.steps::<C, MISSING>(&mut cur[..n], &at[..n], x, depth);
                    for (l, &node) in cur[..n].iter().enumerate() {
                        add_leaf(first + l, node);
                    }
                }
            }
            return;
        }
        // Fewer rows than lanes: each row walks the trees one by one, branching at each node.
        // Eight trees in lockstep instead was measured slower here: the deepest of eight trees
        // is about twice the mean path of a LightGBM tree, and the extra steps cost more than
        // the mispredicted branches they save.
        for row in 0..rows {
            let r = &x[row * features..(row + 1) * features];
            for &root in &self.roots {
                add_leaf(row, self.walk::<C, MISSING>(root, r));
            }
        }
    }

    /// The leaf node `row` reaches from `node`, one branch per node.
    #[inline(always)]
    fn walk<C: Compare, const MISSING: bool>(&self, mut node: u32, row: &[T]) -> u32 {
        while node & LEAF_BIT == 0 {
            let i = node as usize;
            let v = row[self.feature[i] as usize];
            let go_true = C::go_true(v, self.threshold[i], &self.mode, i)
                || (MISSING && self.missing_true[i] && v.is_nan());
            node = self.children[2 * i + usize::from(!go_true)];
        }
        node
    }

    /// Advances every walk `steps` times (the deepest tree's depth), without a branch on the
    /// data: the successor is picked by index, and a walk that reached its leaf stays there.
    /// Stopping once every walk is on a leaf was measured slower: the test is one more step on
    /// each chain.
    #[inline(always)]
    fn steps<C: Compare, const MISSING: bool>(
        &self,
        cur: &mut [u32],
        at: &[usize],
        x: &[T],
        steps: u32,
    ) {
        for _ in 0..steps {
            for (c, &row) in cur.iter_mut().zip(at) {
                let i = (*c & !LEAF_BIT) as usize;
                let v = x[row + self.feature[i] as usize];
                let t = self.threshold[i];
                let go_true = C::go_true(v, t, &self.mode, i)
                    | (MISSING && (self.missing_true[i] & v.is_nan()));
                *c = self.children[2 * i + usize::from(!go_true)];
            }
        }
    }
}

/// One leaf weight into one accumulator, as onnxruntime's aggregators do. The one-target SUM
/// (and AVERAGE) path never marks its score as set (`mark` false): its finalisation does not
/// look.
#[inline(always)]
fn add<T: Float>(aggregate: Aggregate, acc: &mut T, has: &mut bool, v: T, mark: bool) {
    match aggregate {
        Aggregate::Sum | Aggregate::Average => {
            *acc = *acc + v;
            *has |= mark;
        }
        Aggregate::Min => {
            if !*has || v < *acc {
                *acc = v;
            }
            *has = true;
        }
        Aggregate::Max => {
            if !*has || v > *acc {
                *acc = v;
            }
            *has = true;
        }
    }
}

/// The attributes a head's leaf weights and their class or target ids come from (`class_*` or
/// `target_*`), which errors about them name.
fn weight_attrs(head: &Head) -> (&'static str, &'static str) {
    match head {
        Head::Classifier { .. } => ("class_weights", "class_ids"),
        Head::Regressor { .. } => ("target_weights", "target_ids"),
    }
}

/// Refuses parallel arrays of different lengths, and forests too large for the `u32` indices
/// (and the [`LEAF_BIT`]) of the layout.
fn check_lengths(attrs: &Attributes, head: &Head) -> Result<(), BuildError> {
    let n = attrs.nodes_treeids.len();
    if n == 0 {
        return Err(invalid("nodes_treeids", "the ensemble has no nodes"));
    }
    let same_len = |name: &'static str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(invalid(
                name,
                format!("has {len} entries but nodes_treeids has {n}"),
            ))
        }
    };
    same_len("nodes_nodeids", attrs.nodes_nodeids.len())?;
    same_len("nodes_featureids", attrs.nodes_featureids.len())?;
    same_len("nodes_values", attrs.nodes_values.len())?;
    same_len("nodes_modes", attrs.nodes_modes.len())?;
    same_len("nodes_truenodeids", attrs.nodes_truenodeids.len())?;
    same_len("nodes_falsenodeids", attrs.nodes_falsenodeids.len())?;
    if attrs.nodes_missing_value_tracks_true.len() > n {
        return Err(invalid(
            "nodes_missing_value_tracks_true",
            format!("has more entries than the {n} nodes"),
        ));
    }
    let (leaf_attr, ids_attr) = weight_attrs(head);
    let w = attrs.leaf_weights.len();
    for (name, len) in [
        (ids_attr, attrs.leaf_ids.len()),
        ("leaf tree ids", attrs.leaf_treeids.len()),
        ("leaf node ids", attrs.leaf_nodeids.len()),
    ] {
        if len != w {
            return Err(invalid(
                leaf_attr,
                format!("has {w} entries but {name} has {len}"),
            ));
        }
    }
    if n >= (NOT_LEAF as usize) / 2 || w >= (NOT_LEAF as usize) {
        return Err(unsupported(
            "nodes_treeids",
            "more than 2^31 nodes or weights",
        ));
    }
    Ok(())
}

/// Scores per row: the classes of a classifier or the targets of a regressor.
fn score_width(head: &Head) -> Result<usize, BuildError> {
    Ok(match head {
        Head::Classifier { labels } => {
            if labels.len() < 2 {
                // onnxruntime writes two scores into a one-column output here.
                return Err(unsupported(
                    "classlabels_int64s",
                    format!("a classifier with {} class label(s)", labels.len()),
                ));
            }
            labels.len()
        }
        Head::Regressor { n_targets, .. } => {
            if *n_targets == 0 {
                return Err(invalid("n_targets", "must be at least 1"));
            }
            *n_targets
        }
    })
}

/// Where the nodes of the attribute lists are: every node keeps its position in the list, and
/// is found by (tree, node id); leaves are also numbered on their own.
struct NodeIndex {
    by_id: HashMap<(i64, i64), usize>,
    /// Each tree's first node, in list order.
    roots: Vec<usize>,
    /// Per node: its leaf number, or [`NOT_LEAF`].
    leaf_of: Vec<u32>,
    leaves: u32,
}

impl NodeIndex {
    /// Each tree must be one run of the node list, whose first entry is its root (as
    /// onnxruntime takes it).
    fn new(attrs: &Attributes) -> Result<NodeIndex, BuildError> {
        let n = attrs.nodes_treeids.len();
        let mut by_id = HashMap::with_capacity(n);
        let mut roots = Vec::new();
        let mut seen_trees = HashSet::new();
        for i in 0..n {
            let key = (attrs.nodes_treeids[i], attrs.nodes_nodeids[i]);
            if by_id.insert(key, i).is_some() {
                return Err(invalid(
                    "nodes_nodeids",
                    format!("node {} of tree {} is listed twice", key.1, key.0),
                ));
            }
            if i == 0 || attrs.nodes_treeids[i] != attrs.nodes_treeids[i - 1] {
                if !seen_trees.insert(attrs.nodes_treeids[i]) {
                    return Err(unsupported(
                        "nodes_treeids",
                        format!(
                            "the nodes of tree {} are not listed together",
                            attrs.nodes_treeids[i]
                        ),
                    ));
                }
                roots.push(i);
            }
        }
        let mut leaves = 0u32;
        let leaf_of: Vec<u32> = attrs
            .nodes_modes
            .iter()
            .map(|m| {
                if m.is_some() {
                    NOT_LEAF
                } else {
                    leaves += 1;
                    leaves - 1
                }
            })
            .collect();
        Ok(NodeIndex {
            by_id,
            roots,
            leaf_of,
            leaves,
        })
    }
}

/// The leaf weights grouped by leaf, and what the classifier's special cases need to know of
/// them.
struct LeafWeights {
    /// Per leaf: (target, weight) pairs.
    per_leaf: Vec<Vec<(u32, f64)>>,
    /// Every class or target a weight names, on a leaf or not.
    classes_named: BTreeSet<i64>,
    /// No weight is negative (onnxruntime's `weights_are_all_positive_`).
    positive: bool,
}

impl LeafWeights {
    /// Weights by leaf, in attribute order within a leaf (onnxruntime sorts by (tree, node)
    /// and then by position). Weights on internal nodes are ignored, as onnxruntime does.
    fn group(
        attrs: &Attributes,
        index: &NodeIndex,
        head: &Head,
        width: usize,
    ) -> Result<LeafWeights, BuildError> {
        let (leaf_attr, ids_attr) = weight_attrs(head);
        let mut per_leaf: Vec<Vec<(u32, f64)>> = vec![Vec::new(); index.leaves as usize];
        let mut classes_named = BTreeSet::new();
        let mut positive = true;
        for k in 0..attrs.leaf_weights.len() {
            let key = (attrs.leaf_treeids[k], attrs.leaf_nodeids[k]);
            let Some(&i) = index.by_id.get(&key) else {
                return Err(invalid(
                    leaf_attr,
                    format!(
                        "a weight names node {} of tree {}, which does not exist",
                        key.1, key.0
                    ),
                ));
            };
            let target = attrs.leaf_ids[k];
            if target < 0 || target as usize >= width {
                return Err(invalid(
                    ids_attr,
                    format!("{target} is not below the {width} classes or targets"),
                ));
            }
            classes_named.insert(target);
            if attrs.leaf_weights[k] < 0.0 {
                positive = false;
            }
            if index.leaf_of[i] != NOT_LEAF {
                per_leaf[index.leaf_of[i] as usize].push((target as u32, attrs.leaf_weights[k]));
            }
        }
        if width == 1 && per_leaf.iter().any(|ws| ws.len() > 1) {
            // The one-target path adds a leaf's first weight only.
            return Err(unsupported(
                leaf_attr,
                "a leaf of a one-target regressor has several weights",
            ));
        }
        Ok(LeafWeights {
            per_leaf,
            classes_named,
            positive,
        })
    }

    /// The weights in leaf order, as [`Trees`] holds them: `leaf_start`, `weight_target`,
    /// `weight_value`.
    fn flatten(&self) -> (Vec<u32>, Vec<u32>, Vec<f64>) {
        let w: usize = self.per_leaf.iter().map(Vec::len).sum();
        let mut leaf_start = Vec::with_capacity(self.per_leaf.len() + 1);
        let mut weight_target = Vec::with_capacity(w);
        let mut weight_value = Vec::with_capacity(w);
        leaf_start.push(0u32);
        for ws in &self.per_leaf {
            for &(t, v) in ws {
                weight_target.push(t);
                weight_value.push(v);
            }
            leaf_start.push(weight_target.len() as u32);
        }
        (leaf_start, weight_target, weight_value)
    }
}

/// The per-node arrays of a forest, read from the attributes before successors are tagged
/// with [`LEAF_BIT`]: [`depths`] walks the untagged indices.
struct Nodes {
    feature: Vec<u32>,
    threshold: Vec<f64>,
    children: Vec<u32>,
    mode: Vec<Mode>,
    missing_true: Vec<bool>,
    leaf_first: Vec<f64>,
    /// The highest feature index any internal node reads.
    max_feature: usize,
    /// The mode of every internal node, when they all compare the same way.
    uniform: Option<Mode>,
}

impl Nodes {
    /// Lays the nodes out in list order, refusing an internal node whose successors or feature
    /// the walks could not follow.
    fn read(
        attrs: &Attributes,
        index: &NodeIndex,
        per_leaf: &[Vec<(u32, f64)>],
    ) -> Result<Nodes, BuildError> {
        let n = attrs.nodes_treeids.len();
        let mut nodes = Nodes {
            feature: Vec::with_capacity(n),
            threshold: Vec::with_capacity(n),
            children: Vec::with_capacity(2 * n),
            mode: Vec::with_capacity(n),
            missing_true: Vec::with_capacity(n),
            leaf_first: Vec::with_capacity(index.leaves as usize),
            max_feature: 0,
            uniform: None,
        };
        let mut mixed = false;
        for i in 0..n {
            let Some(m) = attrs.nodes_modes[i] else {
                // A leaf loops onto itself: a walk of a fixed number of steps stays there.
                nodes.leaf_first.push(
                    per_leaf[index.leaf_of[i] as usize]
                        .first()
                        .map(|&(_, v)| v)
                        .unwrap_or(attrs.nodes_values[i]),
                );
                nodes.feature.push(0);
                nodes.threshold.push(0.0);
                nodes.children.extend([i as u32, i as u32]);
                nodes.mode.push(Mode::Leq);
                nodes.missing_true.push(false);
                continue;
            };
            let tree = attrs.nodes_treeids[i];
            let child = |attr: &'static str, id: i64| {
                let Some(&c) = index.by_id.get(&(tree, id)) else {
                    return Err(invalid(
                        attr,
                        format!(
                            "node {} of tree {tree} points to node {id}, which does not exist",
                            attrs.nodes_nodeids[i]
                        ),
                    ));
                };
                if c == i {
                    return Err(invalid(
                        attr,
                        format!("node {id} of tree {tree} points to itself"),
                    ));
                }
                Ok(c as u32)
            };
            nodes
                .children
                .push(child("nodes_truenodeids", attrs.nodes_truenodeids[i])?);
            nodes
                .children
                .push(child("nodes_falsenodeids", attrs.nodes_falsenodeids[i])?);
            let f = attrs.nodes_featureids[i];
            if f < 0 || f >= i64::from(u32::MAX >> 1) {
                return Err(invalid(
                    "nodes_featureids",
                    format!("feature {f} is out of range"),
                ));
            }
            nodes.max_feature = nodes.max_feature.max(f as usize);
            nodes.feature.push(f as u32);
            nodes.threshold.push(attrs.nodes_values[i]);
            nodes.mode.push(m);
            nodes
                .missing_true
                .push(attrs.nodes_missing_value_tracks_true.get(i) == Some(&1));
            match nodes.uniform {
                None if !mixed => nodes.uniform = Some(m),
                Some(u) if u != m => {
                    nodes.uniform = None;
                    mixed = true;
                }
                _ => {}
            }
        }
        Ok(nodes)
    }
}

/// Refuses the base values and the classifier cases whose scores or labels onnxruntime leaves
/// undefined, so that finishing a row never has to guess.
fn check_base_values(
    head: &Head,
    width: usize,
    bv: usize,
    post_transform: PostTransform,
    binary_case: bool,
    per_leaf: &[Vec<(u32, f64)>],
) -> Result<(), BuildError> {
    let (leaf_attr, _) = weight_attrs(head);
    match head {
        Head::Classifier { .. } if width > 2 => {
            if bv != 0 && bv != width {
                return Err(invalid(
                    "base_values",
                    format!("has {bv} values for {width} classes"),
                ));
            }
            if bv == 0 && per_leaf.iter().any(Vec::is_empty) {
                // A row could reach only weightless leaves: onnxruntime has no class to
                // pick then.
                return Err(unsupported(
                    leaf_attr,
                    "a leaf without weights in a classifier without base_values",
                ));
            }
        }
        Head::Classifier { .. } => {
            if bv > 2 {
                return Err(invalid(
                    "base_values",
                    format!("has {bv} values for 2 classes"),
                ));
            }
            // onnxruntime keeps a single score when no weight names the second class (and
            // base_values does not have 2 entries); its second score is then derived only
            // for these combinations, and left unwritten for the others.
            let second_always =
                !per_leaf.is_empty() && per_leaf.iter().all(|ws| ws.iter().any(|&(t, _)| t == 1));
            if bv != 2 && !second_always {
                if post_transform == PostTransform::Probit {
                    return Err(unsupported(
                        "post_transform",
                        "PROBIT on a two-class classifier whose weights may not score \
                         the second class",
                    ));
                }
                if !binary_case && bv == 1 {
                    return Err(unsupported(
                        "base_values",
                        "one base value on a two-class classifier with weights on both \
                         classes",
                    ));
                }
            }
        }
        Head::Regressor { .. } => {}
    }
    Ok(())
}

/// Each tree's depth (the most steps from its root to a leaf), refusing a cycle: a walk in one
/// would never end. Shared subtrees are fine.
fn depths(roots: &[u32], children: &[u32], leaf_of: &[u32]) -> Result<Vec<u32>, BuildError> {
    const UNSEEN: u32 = u32::MAX;
    const ON_PATH: u32 = u32::MAX - 1;
    let mut depth = vec![UNSEEN; leaf_of.len()];
    let mut stack: Vec<u32> = Vec::new();
    let mut out = Vec::with_capacity(roots.len());
    for &root in roots {
        stack.push(root);
        while let Some(&top) = stack.last() {
            let node = top as usize;
            if leaf_of[node] != NOT_LEAF {
                depth[node] = 0;
                stack.pop();
                continue;
            }
            if depth[node] == UNSEEN {
                depth[node] = ON_PATH;
            }
            let (t, f) = (children[2 * node] as usize, children[2 * node + 1] as usize);
            let mut pending = false;
            for c in [t, f] {
                match depth[c] {
                    UNSEEN if leaf_of[c] != NOT_LEAF => depth[c] = 0,
                    UNSEEN => {
                        stack.push(c as u32);
                        pending = true;
                    }
                    ON_PATH => {
                        return Err(invalid(
                            "nodes_truenodeids",
                            "the nodes of a tree form a cycle",
                        ))
                    }
                    _ => {}
                }
            }
            if !pending {
                depth[node] = 1 + depth[t].max(depth[f]);
                stack.pop();
            }
        }
        out.push(depth[root as usize]);
    }
    Ok(out)
}

/// The two precisions onnxruntime computes trees in (its `ThresholdType`).
pub trait Float:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const HALF: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f32(self) -> f32;
    fn is_nan(self) -> bool;
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const HALF: f32 = 0.5;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const HALF: f64 = 0.5;
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// A node's comparison, resolved at compile time for forests that use one mode throughout.
trait Compare {
    /// `modes[node]` is read only by [`PerNode`]: a uniform forest never touches it.
    fn go_true<T: Float>(v: T, t: T, modes: &[Mode], node: usize) -> bool;
}

struct Leq;
struct Lt;
struct Gte;
struct Gt;
struct Equal;
struct NotEqual;
struct PerNode;

impl Compare for Leq {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v <= t
    }
}
impl Compare for Lt {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v < t
    }
}
impl Compare for Gte {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v >= t
    }
}
impl Compare for Gt {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v > t
    }
}
impl Compare for Equal {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v == t
    }
}
impl Compare for NotEqual {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, _: &[Mode], _: usize) -> bool {
        v != t
    }
}
impl Compare for PerNode {
    #[inline(always)]
    fn go_true<T: Float>(v: T, t: T, modes: &[Mode], node: usize) -> bool {
        match modes[node] {
            Mode::Leq => v <= t,
            Mode::Lt => v < t,
            Mode::Gte => v >= t,
            Mode::Gt => v > t,
            Mode::Eq => v == t,
            Mode::Neq => v != t,
        }
    }
}
