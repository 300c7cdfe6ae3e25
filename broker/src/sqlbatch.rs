//! Multi-row statements in a few fixed shapes. A multi-row `INSERT … VALUES (…), (…)` has one SQL text per
//! row count; caching every count a batch can have held megabytes of prepared statements per connection,
//! and not caching them re-parsed and re-planned the statement on every batch (3 % of the broker's CPU
//! under load, docs/benchmarks.md finding 13). Cutting a batch into power-of-two chunks gives at most
//! `log2(max) + 1` shapes, each prepared once per connection and cached.

/// Split `items` into chunks whose lengths are powers of two, largest first, none longer than `max` (a
/// power of two). 100 items with `max` 64 → 64, 32, 4.
pub fn pow2_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The largest power of two not above what is left (and not above `max`).
        let n = (1usize << (usize::BITS - 1 - rest.len().leading_zeros())).min(max);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `items` as `Some`, then `None`s up to the next power of two: the rows of a multi-row statement with one
/// SQL text per power of two, whose `None` rows bind NULL keys and so match nothing. One statement for any
/// count, at most `log2(max) + 1` shapes.
pub fn padded<T>(items: &[T]) -> impl Iterator<Item = Option<&T>> {
    let pad = items.len().next_power_of_two() - items.len();
    items.iter().map(Some).chain(std::iter::repeat_n(None, pad))
}

#[cfg(test)]
mod tests {
    use super::{padded, pow2_chunks};

    #[test]
    fn padded_rows_are_a_power_of_two_with_the_items_first() {
        for n in 1..=130usize {
            let v: Vec<usize> = (0..n).collect();
            let rows: Vec<Option<&usize>> = padded(&v).collect();
            assert!(
                rows.len().is_power_of_two() && rows.len() >= n && rows.len() < 2 * n,
                "{n}"
            );
            assert!(rows[..n].iter().zip(&v).all(|(r, x)| *r == Some(x)));
            assert!(rows[n..].iter().all(Option::is_none));
        }
    }

    fn lens(n: usize, max: usize) -> Vec<usize> {
        let v: Vec<usize> = (0..n).collect();
        let chunks: Vec<&[usize]> = pow2_chunks(&v, max).collect();
        // Every item once, in order.
        assert_eq!(chunks.concat(), v);
        chunks.iter().map(|c| c.len()).collect()
    }

    #[test]
    fn chunks_are_powers_of_two_largest_first_and_keep_order() {
        assert_eq!(lens(0, 64), Vec::<usize>::new());
        assert_eq!(lens(1, 64), vec![1]);
        assert_eq!(lens(2, 64), vec![2]);
        assert_eq!(lens(3, 64), vec![2, 1]);
        assert_eq!(lens(100, 64), vec![64, 32, 4]);
        assert_eq!(lens(200, 64), vec![64, 64, 64, 8]);
        assert_eq!(lens(127, 64), vec![64, 32, 16, 8, 4, 2, 1]);
        for n in 0..600 {
            for l in lens(n, 256) {
                assert!(l.is_power_of_two() && l <= 256, "{n}: {l}");
            }
        }
    }
}
