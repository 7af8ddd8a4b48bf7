//! DSSE envelopes (<https://github.com/secure-systems-lab/dsse>): a payload and its type,
//! signed with ed25519 over the pre-authentication encoding (PAE) of both.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::keyid;
use crate::{ProvenanceError, Result};

/// The payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A DSSE envelope (JSON serialization).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The payload, standard base64.
    pub payload: String,
    /// What the payload is.
    pub payload_type: String,
    /// Signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Which key made it (a hint only: it is not signed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// The ed25519 signature, standard base64.
    pub sig: String,
}

/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Signs an in-toto payload ([`PAYLOAD_TYPE`]).
pub fn sign(payload: &[u8], key: &SigningKey) -> Envelope {
    sign_typed(PAYLOAD_TYPE, payload, key)
}

/// Signs a payload of any type.
pub fn sign_typed(payload_type: &str, payload: &[u8], key: &SigningKey) -> Envelope {
    let sig = key.sign(&pae(payload_type, payload));
    Envelope {
        payload: STANDARD.encode(payload),
        payload_type: payload_type.to_string(),
        signatures: vec![Signature { keyid: keyid(&key.verifying_key()), sig: STANDARD.encode(sig.to_bytes()) }],
    }
}

/// Checks that some signature in the envelope verifies with `key` (strict ed25519: no weak
/// keys, no malleable signatures) and returns the payload. The payload type is covered by the
/// signature but not checked here; callers check it is the one they expect.
pub fn verify(env: &Envelope, key: &VerifyingKey) -> Result<Vec<u8>> {
    let payload = decode(&env.payload).ok_or_else(|| ProvenanceError::Envelope("payload is not base64".into()))?;
    if env.signatures.is_empty() {
        return Err(ProvenanceError::Envelope("it has no signatures".into()));
    }
    let msg = pae(&env.payload_type, &payload);
    let ok = env.signatures.iter().any(|s| {
        let Some(bytes) = decode(&s.sig) else { return false };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else { return false };
        key.verify_strict(&msg, &sig).is_ok()
    });
    if ok {
        Ok(payload)
    } else {
        Err(ProvenanceError::BadSignature { keyid: keyid(key) })
    }
}

/// Base64 as DSSE allows it: standard or URL-safe alphabet, padded or not.
fn decode(s: &str) -> Option<Vec<u8>> {
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn pae_matches_hand_computed() {
        // The example from the DSSE protocol document.
        assert_eq!(pae("http://example.com/HelloWorld", b"hello world"), b"DSSEv1 29 http://example.com/HelloWorld 11 hello world");
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
        // Lengths are byte lengths, not character counts.
        assert_eq!(pae("t", "é".as_bytes()), "DSSEv1 1 t 2 é".as_bytes());
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let env = sign(b"{\"a\":1}", &k);
        assert_eq!(env.payload_type, PAYLOAD_TYPE);
        assert_eq!(env.payload, "eyJhIjoxfQ==");
        assert_eq!(env.signatures[0].keyid, keyid(&k.verifying_key()));
        // Survives JSON.
        let env: Envelope = serde_json::from_slice(&serde_json::to_vec(&env).unwrap()).unwrap();
        assert_eq!(verify(&env, &k.verifying_key()).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn flipped_payload_byte_fails() {
        let k = key(2);
        let mut env = sign(b"hello world", &k);
        let mut p = STANDARD.decode(&env.payload).unwrap();
        p[3] ^= 1;
        env.payload = STANDARD.encode(p);
        assert!(matches!(verify(&env, &k.verifying_key()), Err(ProvenanceError::BadSignature { .. })));
    }

    #[test]
    fn flipped_signature_byte_fails() {
        let k = key(3);
        let mut env = sign(b"hello world", &k);
        let mut s = STANDARD.decode(&env.signatures[0].sig).unwrap();
        s[10] ^= 0x80;
        env.signatures[0].sig = STANDARD.encode(s);
        assert!(matches!(verify(&env, &k.verifying_key()), Err(ProvenanceError::BadSignature { .. })));
    }

    #[test]
    fn wrong_key_fails_and_names_the_key() {
        let env = sign(b"hello world", &key(4));
        let other = key(5).verifying_key();
        let e = verify(&env, &other).unwrap_err();
        assert_eq!(e.to_string(), format!("signature does not verify with key {}", keyid(&other)));
    }

    #[test]
    fn payload_type_is_signed() {
        let k = key(6);
        let mut env = sign(b"hello world", &k);
        env.payload_type = "text/plain".into();
        assert!(verify(&env, &k.verifying_key()).is_err());
    }

    #[test]
    fn malformed_envelopes() {
        let k = key(7);
        let mut env = sign(b"x", &k);
        env.signatures.clear();
        assert!(matches!(verify(&env, &k.verifying_key()), Err(ProvenanceError::Envelope(_))));
        let mut env = sign(b"x", &k);
        env.signatures[0].sig = "!!".into();
        assert!(matches!(verify(&env, &k.verifying_key()), Err(ProvenanceError::BadSignature { .. })));
        env.payload = "%%%".into();
        assert!(matches!(verify(&env, &k.verifying_key()), Err(ProvenanceError::Envelope(_))));
        // A second, valid signature among bad ones is enough.
        let mut env = sign(b"x", &k);
        env.signatures.insert(0, Signature { keyid: "junk".into(), sig: STANDARD.encode([0u8; 64]) });
        assert_eq!(verify(&env, &k.verifying_key()).unwrap(), b"x");
    }
}
