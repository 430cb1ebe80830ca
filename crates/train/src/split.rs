//! Train / validation / test splits: random stratified (per class), by time (train on the past,
//! test on the most recent), or given by a column.

use serde::Serialize;

use crate::config::{SplitConfig, SplitMethod};
use crate::data::Frame;
use crate::rng::Rng;

/// Row indices of each split, ascending.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Splits {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `frame`. `classes`: each row's class index, for stratification.
pub fn split(
    frame: &Frame,
    config: &SplitConfig,
    classes: Option<&[usize]>,
    seed: u64,
) -> Result<Splits, String> {
    let n = frame.rows();
    let mut s = Splits::default();
    match config.method {
        SplitMethod::Stratified => {
            let groups: Vec<Vec<usize>> = match classes {
                Some(c) => {
                    let k = c.iter().max().map_or(0, |m| m + 1);
                    let mut g = vec![Vec::new(); k];
                    for (i, &class) in c.iter().enumerate() {
                        g[class].push(i);
                    }
                    g
                }
                None => vec![(0..n).collect()],
            };
            for (k, mut group) in groups.into_iter().enumerate() {
                Rng::derive(seed, 0x5EED_0000 + k as u64).shuffle(&mut group);
                let (n_test, n_val) = shares(group.len(), config);
                s.test.extend_from_slice(&group[..n_test]);
                s.validation
                    .extend_from_slice(&group[n_test..n_test + n_val]);
                s.train.extend_from_slice(&group[n_test + n_val..]);
            }
        }
        SplitMethod::Time => {
            let time = frame
                .time
                .as_ref()
                .ok_or("a time split needs a time column")?;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| time[a].total_cmp(&time[b]).then(a.cmp(&b)));
            let (n_test, n_val) = shares(n, config);
            let n_train = n - n_test - n_val;
            s.train = order[..n_train].to_vec();
            s.validation = order[n_train..n_train + n_val].to_vec();
            s.test = order[n_train + n_val..].to_vec();
        }
        SplitMethod::Column => {
            let values = frame
                .split
                .as_ref()
                .ok_or("a column split needs the split column")?;
            for (i, v) in values.iter().enumerate() {
                match v.as_deref() {
                    Some("train") => s.train.push(i),
                    Some("validation" | "valid" | "val") => s.validation.push(i),
                    Some("test") => s.test.push(i),
                    other => {
                        return Err(format!(
                        "split column: row {i} holds {other:?}; expected train, validation or test"
                    ))
                    }
                }
            }
        }
    }
    for (name, rows) in [
        ("train", &s.train),
        ("validation", &s.validation),
        ("test", &s.test),
    ] {
        if rows.is_empty() {
            return Err(format!(
                "the split leaves no {name} rows ({n} labelled rows in all)"
            ));
        }
    }
    s.train.sort_unstable();
    s.validation.sort_unstable();
    s.test.sort_unstable();
    Ok(s)
}

/// (test, validation) row counts of a group, each at least one when the group has three rows.
fn shares(n: usize, config: &SplitConfig) -> (usize, usize) {
    let round = |share: f64| ((n as f64) * share).round() as usize;
    let mut test = round(config.test);
    let mut val = round(config.validation);
    if n >= 3 {
        test = test.max(1);
        val = val.max(1);
    }
    while test + val >= n && (test > 0 || val > 0) {
        if val >= test && val > 0 {
            val -= 1;
        } else {
            test -= 1;
        }
    }
    (test, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SourceSummary, Target};

    fn frame(n: usize) -> Frame {
        Frame {
            features: vec!["a".into()],
            x: (0..n).map(|i| i as f64).collect(),
            target: Target::Values(vec![0.0; n]),
            time: Some((0..n).rev().map(|i| i as f64).collect()),
            split: None,
            summary: SourceSummary::default(),
        }
    }

    #[test]
    fn stratified_keeps_class_shares_and_is_seeded() {
        let f = frame(100);
        let classes: Vec<usize> = (0..100).map(|i| usize::from(i < 20)).collect();
        let s = split(&f, &SplitConfig::default(), Some(&classes), 1).unwrap();
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (70, 15, 15)
        );
        let ones = |rows: &[usize]| rows.iter().filter(|&&i| classes[i] == 1).count();
        assert_eq!(
            (ones(&s.train), ones(&s.validation), ones(&s.test)),
            (14, 3, 3)
        );
        assert_eq!(
            s,
            split(&f, &SplitConfig::default(), Some(&classes), 1).unwrap()
        );
        assert_ne!(
            s,
            split(&f, &SplitConfig::default(), Some(&classes), 2).unwrap()
        );
    }

    #[test]
    fn a_time_split_tests_on_the_most_recent_rows() {
        let f = frame(20);
        let config = SplitConfig {
            method: SplitMethod::Time,
            validation: 0.2,
            test: 0.2,
            column: None,
        };
        let s = split(&f, &config, None, 0).unwrap();
        // Times run backwards: row 0 is the newest.
        assert_eq!(s.test, vec![0, 1, 2, 3]);
        assert_eq!(s.validation, vec![4, 5, 6, 7]);
        assert_eq!(s.train, (8..20).collect::<Vec<_>>());
    }
}
