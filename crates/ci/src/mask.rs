//! Masking secrets in everything kiln prints or stores: the raw value and every form a build
//! is likely to print it in (base64 at each of the three byte offsets, in both alphabets; URL-
//! and JSON-escaped), also when a form is split across output chunks.

use base64::Engine as _;

/// What a masked secret is replaced with.
pub const MASK: &[u8] = b"***";

/// The forms of one secret value worth masking (at least 3 bytes each).
pub fn forms(secret: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![secret.as_bytes().to_vec()];
    let raw = secret.as_bytes();
    for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
        for k in 0..3usize {
            // The secret at byte offset k (mod 3) of some larger encoded blob: only the
            // characters made purely of the secret's bits are the same in every such blob.
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(raw);
            let enc = engine.encode(&padded);
            let start = (k * 8).div_ceil(6);
            let end = ((k + raw.len()) * 8) / 6;
            if end > start {
                v.push(enc.as_bytes()[start..end].to_vec());
            }
        }
    }
    let url: String = raw
        .iter()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(b) { (*b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    v.push(url.clone().into_bytes());
    v.push(url.to_lowercase().into_bytes());
    let json = serde_json::to_string(secret).unwrap_or_default();
    v.push(json.as_bytes()[1..json.len() - 1].to_vec());
    v.retain(|f| f.len() >= 3);
    v.sort();
    v.dedup();
    // Longest first, so a longer form is masked before a shorter one inside it.
    v.sort_by_key(|f| std::cmp::Reverse(f.len()));
    v
}

/// Masks a set of secrets in a stream of chunks.
#[derive(Debug, Clone)]
pub struct Masker {
    forms: Vec<Vec<u8>>,
    keep: usize,
    tail: Vec<u8>,
}

impl Masker {
    /// A masker for these secret values.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Masker {
        let mut all: Vec<Vec<u8>> = secrets.iter().flat_map(|s| forms(s.as_ref())).collect();
        all.sort_by_key(|f| std::cmp::Reverse(f.len()));
        all.dedup();
        let keep = all.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1);
        Masker { forms: all, keep, tail: Vec::new() }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    fn replace_all(&self, buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            for f in &self.forms {
                if buf[i..].starts_with(f) {
                    out.extend_from_slice(MASK);
                    i += f.len();
                    continue 'scan;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// Masks a chunk; returns what can be emitted now (a tail that may start a secret split
    /// across chunks is held back until the next chunk or [`Masker::finish`]).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.forms.is_empty() {
            return chunk.to_vec();
        }
        self.tail.extend_from_slice(chunk);
        // Emit everything except the last `keep` bytes, which could be the start of a match.
        // A match that begins before the cut is masked whole (it is fully inside `tail`).
        let mut out = Vec::new();
        let mut i = 0;
        let buf = std::mem::take(&mut self.tail);
        let limit = buf.len().saturating_sub(self.keep);
        'scan: while i < limit {
            for f in &self.forms {
                if buf[i..].starts_with(f) {
                    out.extend_from_slice(MASK);
                    i += f.len();
                    continue 'scan;
                }
                // A possible match running past the end of what we have: wait for more.
                if buf.len() - i < f.len() && f.starts_with(&buf[i..]) {
                    self.tail = buf[i..].to_vec();
                    return out;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        self.tail = buf[i..].to_vec();
        out
    }

    /// Emits what is held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let t = std::mem::take(&mut self.tail);
        self.replace_all(&t)
    }

    /// Masks a whole text at once.
    pub fn mask_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.replace_all(s.as_bytes())).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-T0ken/with+chars";

    fn masked_all(m: &mut Masker, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.push(c));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_and_every_derived_form() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let texts = vec![
            format!("token={SECRET}\n"),
            format!("{}\n", b64.encode(SECRET)),
            format!("{}\n", b64.encode(format!("x{SECRET}"))),
            format!("{}\n", b64.encode(format!("xy{SECRET}"))),
            format!("{}\n", b64.encode(format!("user:{SECRET}"))), // HTTP basic auth
            format!("{}\n", base64::engine::general_purpose::URL_SAFE.encode(format!("ab{SECRET}"))),
            format!("{}\n", serde_json::to_string(&serde_json::json!({ "t": SECRET })).unwrap()),
            "s3cr3t-T0ken%2Fwith%2Bchars\n".to_string(),
        ];
        for t in texts {
            let mut m = Masker::new(&[SECRET]);
            let out = masked_all(&mut m, &[t.as_bytes()]);
            assert!(out.contains("***"), "not masked: {t} -> {out}");
            assert!(!out.contains("T0ken"), "leaked: {out}");
        }
    }

    #[test]
    fn split_across_chunks_at_every_point() {
        let text = format!("before {SECRET} after");
        for cut in 0..text.len() {
            let mut m = Masker::new(&[SECRET]);
            let out = masked_all(&mut m, &[&text.as_bytes()[..cut], &text.as_bytes()[cut..]]);
            assert_eq!(out, "before *** after", "cut at {cut}");
        }
        // Byte at a time.
        let mut m = Masker::new(&[SECRET]);
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(masked_all(&mut m, &chunks), "before *** after");
    }

    #[test]
    fn text_without_secrets_passes_unchanged() {
        let mut m = Masker::new(&[SECRET]);
        let t = "just some build output\nwith s3cr3t but not the rest\n";
        assert_eq!(masked_all(&mut m, &[t.as_bytes()]), t);
        let mut none = Masker::new::<&str>(&[]);
        assert_eq!(none.push(b"abc"), b"abc");
    }
}
