//! Small helpers for the messages the library writes (a leaf module).

/// `n` and the noun, singular for one: `count(1, "KV head")` is "1 KV head", `count(8, "KV
/// head")` "8 KV heads".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular() {
        assert_eq!(super::count(1, "KV head"), "1 KV head");
        assert_eq!(super::count(0, "token"), "0 tokens");
        assert_eq!(super::count(16, "token"), "16 tokens");
    }
}
