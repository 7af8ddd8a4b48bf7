//! Masking secrets in everything kiln prints or stores: the raw value and every form a build
//! is likely to print it in (base64 at each of the three byte offsets, in both alphabets, also
//! wrapped into lines as `base64` and PEM do; hex in both cases, also wrapped; URL- and
//! JSON-escaped), also when a form is split across output chunks.
//!
//! Masking cannot stop a build that reads a secret from sending it out in a form no masker
//! knows (reversed, XORed, one byte per line): a secret given to an untrusted build is burned.

use base64::Engine as _;

/// What a masked secret is replaced with.
pub const MASK: &[u8] = b"***";

/// One form of a secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Form {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Encoders wrap it into lines (`base64` at 76 columns, PEM at 64, `xxd -p` at 60): one
    /// line break (`\n` or `\r\n`) may stand between any two of its bytes.
    pub wraps: bool,
}

/// The forms of one secret value worth masking (at least 3 bytes each).
pub fn forms(secret: &str) -> Vec<Form> {
    let raw = secret.as_bytes();
    let plain = |bytes: Vec<u8>| Form { bytes, wraps: false };
    let wrapped = |bytes: Vec<u8>| Form { bytes, wraps: true };
    let mut v: Vec<Form> = vec![plain(raw.to_vec())];
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
                v.push(wrapped(enc.as_bytes()[start..end].to_vec()));
            }
        }
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    v.push(wrapped(hex.to_uppercase().into_bytes()));
    v.push(wrapped(hex.into_bytes()));
    let url: String = raw
        .iter()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(b) { (*b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    v.push(plain(url.to_lowercase().into_bytes()));
    v.push(plain(url.into_bytes()));
    let json = serde_json::to_string(secret).unwrap_or_default();
    v.push(plain(json.as_bytes()[1..json.len() - 1].to_vec()));
    v.retain(|f| f.bytes.len() >= 3);
    v.sort();
    v.dedup_by(|a, b| a.bytes == b.bytes && {
        b.wraps |= a.wraps;
        true
    });
    // Longest first, so a longer form is masked before a shorter one inside it.
    v.sort_by_key(|f| std::cmp::Reverse(f.bytes.len()));
    v
}

/// How a form meets the text at some position.
enum Hit {
    /// It is there, `n` bytes of text long (line breaks included).
    Full(usize),
    /// The text ends inside what could still become it.
    Partial,
    /// It is not there.
    No,
}

impl Form {
    fn at(&self, text: &[u8]) -> Hit {
        let (mut i, mut k) = (0, 0);
        while k < self.bytes.len() {
            let Some(&c) = text.get(i) else { return Hit::Partial };
            if c == self.bytes[k] {
                i += 1;
                k += 1;
                continue;
            }
            if !self.wraps || k == 0 {
                return Hit::No;
            }
            // One line break, then the next byte of the form (so a held-back tail stays short).
            i += match (c, text.get(i + 1)) {
                (b'\n', _) => 1,
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => return Hit::Partial,
                _ => return Hit::No,
            };
            match text.get(i) {
                None => return Hit::Partial,
                Some(&c) if c == self.bytes[k] => {}
                Some(_) => return Hit::No,
            }
        }
        Hit::Full(i)
    }
}

/// Masks a set of secrets in a stream of chunks.
#[derive(Debug, Clone)]
pub struct Masker {
    forms: Vec<Form>,
    tail: Vec<u8>,
}

impl Masker {
    /// A masker for these secret values.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Masker {
        let mut all: Vec<Form> = secrets.iter().flat_map(|s| forms(s.as_ref())).collect();
        all.sort_by_key(|f| std::cmp::Reverse(f.bytes.len()));
        all.dedup();
        Masker { forms: all, tail: Vec::new() }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Masks `buf`; returns the output and how much of `buf` it covers. Unless `at_end`, it
    /// stops where the rest could still become a secret.
    fn scan(&self, buf: &[u8], at_end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            for f in &self.forms {
                match f.at(&buf[i..]) {
                    Hit::Full(n) => {
                        out.extend_from_slice(MASK);
                        i += n;
                        continue 'scan;
                    }
                    Hit::Partial if !at_end => return (out, i),
                    Hit::Partial | Hit::No => {}
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, i)
    }

    /// Masks a chunk; returns what can be emitted now (a tail that may start a secret split
    /// across chunks is held back until the next chunk or [`Masker::finish`]).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.forms.is_empty() {
            return chunk.to_vec();
        }
        self.tail.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.tail);
        let (out, used) = self.scan(&buf, false);
        self.tail = buf[used..].to_vec();
        out
    }

    /// Emits what is held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let t = std::mem::take(&mut self.tail);
        self.scan(&t, true).0
    }

    /// Masks a whole text at once.
    pub fn mask_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.scan(s.as_bytes(), true).0).into_owned()
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

    /// `base64 -w WIDTH` of `data`, lines ended by `eol`.
    fn wrapped_b64(data: &[u8], width: usize, eol: &str) -> String {
        let enc = base64::engine::general_purpose::STANDARD.encode(data);
        enc.as_bytes().chunks(width).map(|l| format!("{}{eol}", String::from_utf8_lossy(l))).collect()
    }

    #[test]
    fn wrapped_base64_at_76_and_64_columns_and_every_offset() {
        // 57 bytes and more: coreutils' base64 wraps within the secret.
        let secret = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-long-secret-value!";
        let show = |s: &str| s.chars().take(12).collect::<String>();
        for width in [76, 64] {
            for eol in ["\n", "\r\n"] {
                for lead in 0..80 {
                    let data = format!("{}{secret}tail", "x".repeat(lead));
                    let text = wrapped_b64(data.as_bytes(), width, eol);
                    let mut m = Masker::new(&[secret]);
                    let out = masked_all(&mut m, &[text.as_bytes()]);
                    assert!(out.contains("***"), "width {width} lead {lead}: {out}");
                    // No line of the output still carries 8 or more characters of the secret's
                    // encoding at this offset.
                    let enc = base64::engine::general_purpose::STANDARD.encode(data.as_bytes());
                    let start = (lead * 8).div_ceil(6) + 1;
                    let probe = &enc[start..start + 8];
                    assert!(!out.replace(['\r', '\n'], "").contains(probe), "width {width} lead {lead}: {} leaked in {out}", show(probe));
                    // Byte-at-a-time delivery masks the same.
                    let mut m = Masker::new(&[secret]);
                    let chunks: Vec<&[u8]> = text.as_bytes().chunks(7).collect();
                    assert_eq!(masked_all(&mut m, &chunks), out, "width {width} lead {lead}");
                }
            }
        }
    }

    #[test]
    fn base64url_and_hex_in_both_cases() {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
        let xxd: String = hex.as_bytes().chunks(60).map(|l| format!("{}\n", String::from_utf8_lossy(l))).collect();
        for t in [format!("{}\n", url.encode(format!("z{SECRET}"))), format!("{hex}\n"), format!("{}\n", hex.to_uppercase()), xxd] {
            let mut m = Masker::new(&[SECRET]);
            let out = masked_all(&mut m, &[t.as_bytes()]);
            assert!(out.contains("***") && !out.contains(&hex[4..16]) && !out.contains(&hex[4..16].to_uppercase()), "not masked: {t} -> {out}");
        }
    }

    #[test]
    fn a_held_back_tail_stays_short() {
        // A prefix of an encoded form followed by endless line breaks is not held forever.
        let mut m = Masker::new(&[SECRET]);
        let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
        let mut out = m.push(&hex.as_bytes()[..10]);
        for _ in 0..1000 {
            out.extend(m.push(b"\n"));
        }
        assert!(m.tail.len() <= 2 * hex.len(), "{} bytes held", m.tail.len());
        out.extend(m.finish());
        assert!(out.starts_with(&hex.as_bytes()[..10]));
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
