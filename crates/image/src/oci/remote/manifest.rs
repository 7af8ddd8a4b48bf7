//! The registry documents kiln reads: image indexes (and docker manifest lists), image
//! manifests, and the image config; only the fields kiln uses.

use serde::Deserialize;

use super::PullError;
use crate::oci::Compression;
use crate::store::Digest;

/// Media types of an index (one manifest per platform).
pub const INDEX_TYPES: &[&str] = &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
/// Media types of an image manifest.
pub const MANIFEST_TYPES: &[&str] = &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// The `Accept` header for manifest requests.
pub fn accept() -> String {
    INDEX_TYPES.iter().chain(MANIFEST_TYPES).copied().collect::<Vec<_>>().join(", ")
}

/// A reference to a blob or manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The platform (index entries).
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The sha256 digest (other algorithms are refused).
    pub fn sha256(&self, what: &str) -> Result<Digest, PullError> {
        self.digest
            .strip_prefix("sha256:")
            .and_then(Digest::parse)
            .ok_or_else(|| PullError::Unsupported { what: what.to_owned(), detail: format!("digest {:?} is not sha256 and 64 lowercase hex digits", cut(&self.digest)) })
    }
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`…
    #[serde(default)]
    pub architecture: String,
    /// `linux`…
    #[serde(default)]
    pub os: String,
}

/// An index or a manifest, told apart by media type.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// 2 for both kinds.
    #[serde(default)]
    pub schema_version: u32,
    /// May be absent (then the Content-Type says).
    #[serde(default)]
    pub media_type: Option<String>,
    /// Index entries.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// A manifest's config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// A manifest's layers, lowest first.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// What a document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// Pick a platform's manifest from these.
    Index(Vec<Descriptor>),
    /// The config and the layers.
    Manifest {
        /// The config blob.
        config: Descriptor,
        /// The layers, lowest first.
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or index; `content_type` is the response's.
pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Parsed, PullError> {
    let unsupported = |detail: String| PullError::Unsupported { what: what.to_owned(), detail };
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| unsupported(format!("not a manifest: {e}")))?;
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
    let kind = doc.media_type.clone().or(ct).unwrap_or_default();
    if doc.schema_version != 2 {
        return Err(unsupported(format!("schema version {} (only version 2 manifests are read)", doc.schema_version)));
    }
    if INDEX_TYPES.contains(&kind.as_str()) || (kind.is_empty() && doc.manifests.is_some()) {
        return Ok(Parsed::Index(doc.manifests.ok_or_else(|| unsupported("an index without manifests".into()))?));
    }
    if MANIFEST_TYPES.contains(&kind.as_str()) || (kind.is_empty() && doc.layers.is_some()) {
        let config = doc.config.ok_or_else(|| unsupported("a manifest without a config".into()))?;
        let layers = doc.layers.ok_or_else(|| unsupported("a manifest without layers".into()))?;
        return Ok(Parsed::Manifest { config, layers });
    }
    Err(unsupported(format!("media type {:?} is neither an image index nor an image manifest", cut(&kind))))
}

/// The index entry for linux/amd64 (the only guest kiln runs).
pub fn pick_platform<'a>(entries: &'a [Descriptor], what: &str) -> Result<&'a Descriptor, PullError> {
    entries
        .iter()
        .filter(|d| MANIFEST_TYPES.contains(&d.media_type.as_str()))
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
        .ok_or_else(|| {
            let have: Vec<String> = entries.iter().filter_map(|d| d.platform.as_ref()).map(|p| format!("{}/{}", p.os, p.architecture)).collect();
            PullError::Unsupported { what: what.to_owned(), detail: format!("no linux/amd64 image in the index (it has: {})", if have.is_empty() { "none".into() } else { have.join(", ") }) }
        })
}

/// A layer's compression from its media type.
pub fn compression(media_type: &str, what: &str) -> Result<Compression, PullError> {
    let t = media_type.replace(".nondistributable", "");
    Ok(match t.as_str() {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => return Err(PullError::Unsupported { what: what.to_owned(), detail: format!("layer media type {:?} is not a tar layer", cut(media_type)) }),
    })
}

/// The image config's fields kiln uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ImageConfig {
    /// `amd64`…
    #[serde(default)]
    pub architecture: String,
    /// `linux`…
    #[serde(default)]
    pub os: String,
    /// What the image's processes run with.
    #[serde(default)]
    pub config: RunConfig,
}

/// The run settings of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct RunConfig {
    /// `NAME=value` entries.
    #[serde(rename = "Env", default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// The working folder.
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_as_default")]
    pub working_dir: String,
    /// The user.
    #[serde(rename = "User", default, deserialize_with = "null_as_default")]
    pub user: String,
}

fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn cut(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_manifest_and_config() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":2,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Parsed::Index(entries) = parse(idx, None, "x").unwrap() else { panic!() };
        assert_eq!(pick_platform(&entries, "x").unwrap().digest, "sha256:bb");
        let e = pick_platform(&entries[..1], "x").unwrap_err().to_string();
        assert!(e.contains("linux/arm64"), "{e}");
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":3},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:dd","size":4}]}"#;
        let Parsed::Manifest { layers, .. } = parse(m, Some("application/vnd.oci.image.manifest.v1+json"), "x").unwrap() else { panic!() };
        assert_eq!(compression(&layers[0].media_type, "x").unwrap(), Compression::Gzip);
        assert!(compression("application/vnd.in-toto+json", "x").is_err());
        assert!(parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None, "x").is_err());
        assert!(layers[0].sha256("x").is_err(), "a short digest is refused");
        let c: ImageConfig = serde_json::from_str(r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin"],"WorkingDir":null}}"#).unwrap();
        assert_eq!(c.config.env, ["PATH=/usr/bin"]);
    }
}
