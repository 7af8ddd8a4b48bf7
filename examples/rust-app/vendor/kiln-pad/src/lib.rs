//! Pads strings (a fixture of kiln's tests).

/// `s` padded on the left with `c` to `n` characters.
pub fn left(s: &str, n: usize, c: char) -> String {
    let fill = n.saturating_sub(s.chars().count());
    std::iter::repeat(c).take(fill).chain(s.chars()).collect()
}
