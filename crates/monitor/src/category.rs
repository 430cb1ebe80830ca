//! Bounds on categorical values, the one part of monitoring whose size a client decides: a
//! BYTES input may hold a megabyte per row, and every distinct value would otherwise be kept in
//! windows, baselines, reports, histograms and pages. Values are cut here as they enter drift
//! monitoring; the prediction log keeps them as sent (retention bounds it).

use std::borrow::Cow;

/// The longest category kept, in bytes of UTF-8. A longer value is cut on a character boundary
/// and ends in [`TRUNCATION_MARK`], at most this long with the mark. Values that share their
/// first bytes then count as one category: a category is a label, not a payload.
pub const MAX_CATEGORY_BYTES: usize = 256;

/// What ends a cut category, so that a page or a report shows it was cut.
pub const TRUNCATION_MARK: &str = "…";

/// The most categories counted per feature (the [`OTHER_CATEGORY`] bucket included). Beyond it,
/// the least frequent values count under [`OTHER_CATEGORY`], so proportions still sum to 1.
pub const MAX_CATEGORIES: usize = 1000;

/// The bucket of the categories beyond [`MAX_CATEGORIES`]. Reserved: a value spelled so counts
/// in the bucket once a feature has more categories than the cap.
pub const OTHER_CATEGORY: &str = "(other)";

/// The most categories a report lists by name as unseen or vanished (with the count of all).
pub const MAX_LISTED_CATEGORIES: usize = 20;

/// `value` as a category: itself when at most [`MAX_CATEGORY_BYTES`] long, else cut (an owned
/// string, so a caller can tell it was cut). Idempotent: a cut value is short enough.
pub fn bounded(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_CATEGORY_BYTES {
        return Cow::Borrowed(value);
    }
    let mut end = MAX_CATEGORY_BYTES - TRUNCATION_MARK.len();
    // Index 0 is a character boundary, so this stops.
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATION_MARK}", &value[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_kept_as_they_are() {
        assert!(matches!(bounded("iris"), Cow::Borrowed("iris")));
        let exact = "x".repeat(MAX_CATEGORY_BYTES);
        assert!(matches!(bounded(&exact), Cow::Borrowed(_)));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_marked() {
        let long = "a".repeat(MAX_CATEGORY_BYTES + 1);
        let cut = bounded(&long);
        assert!(matches!(cut, Cow::Owned(_)));
        assert_eq!(cut.len(), MAX_CATEGORY_BYTES);
        assert!(cut.ends_with(TRUNCATION_MARK));
        // Four-byte characters straddle every cut point but one in four: never split.
        for shift in 0..4 {
            let value = format!("{}{}", "b".repeat(shift), "😀".repeat(MAX_CATEGORY_BYTES));
            let cut = bounded(&value);
            assert!(cut.len() <= MAX_CATEGORY_BYTES, "{}", cut.len());
            assert!(cut.len() > MAX_CATEGORY_BYTES - TRUNCATION_MARK.len() - 4);
            let body = cut.strip_suffix(TRUNCATION_MARK).expect("marked");
            assert!(value.starts_with(body));
            assert!(body.ends_with('😀'));
        }
        // Cutting twice changes nothing.
        assert!(matches!(bounded(&cut), Cow::Borrowed(_)));
    }
}
