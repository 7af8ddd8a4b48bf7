//! kiln's rust example: a label made with a dependency from a registry.

/// A build number, zero-padded to six digits.
fn label(n: u64) -> String {
    format!("build-{}", kiln_pad::left(&n.to_string(), 6, '0'))
}

fn main() {
    std::fs::create_dir_all("dist").expect("dist");
    std::fs::write("dist/label.txt", format!("{}\n", label(7))).expect("write");
    println!("rust-app: built dist/label.txt");
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn pads() {
        assert_eq!(label(42), "build-000042");
        assert_eq!(label(1234567), "build-1234567");
    }
}
