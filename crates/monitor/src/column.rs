//! Named columns of feature values: what a baseline is built from, what a window holds and what
//! the prediction log reads back.

use serde::{Deserialize, Serialize};

/// How a feature's values are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

/// One feature's values, row by row.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    /// NaN is a missing value.
    Numeric(Vec<f64>),
    /// `None` is a missing value.
    Categorical(Vec<Option<String>>),
}

impl Column {
    pub fn kind(&self) -> FeatureKind {
        match self {
            Column::Numeric(_) => FeatureKind::Numeric,
            Column::Categorical(_) => FeatureKind::Categorical,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Categorical(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Columns by name, in a stable order.
pub type Columns = Vec<(String, Column)>;
