//! Pulling an image from a registry (the OCI distribution API, read side): resolve a
//! reference to a linux/amd64 manifest, then fetch its config and layers into the store by
//! digest. Registries on loopback addresses are spoken to over plain HTTP, every other over
//! HTTPS with the host's trust store; credentials come from the docker config file, answering
//! `Basic` and `Bearer` (token service) challenges.
//!
//! Everything a registry sends is bounded before it is read: manifests and configs by size
//! caps, blobs by the size their manifest declares (and caps on it), and every blob and
//! manifest is checked against its digest before it is kept. A blob already in the store is
//! not fetched again.

mod auth;
mod error;
pub mod manifest;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

pub use auth::{docker_config_path, docker_credentials, Credentials};
pub use error::PullError;
pub use manifest::ImageConfig;

use super::{Compression, Reference};
use crate::store::{Digest, Store};

/// Caps on what a registry may send.
#[derive(Debug, Clone)]
pub struct PullLimits {
    /// The largest manifest or index.
    pub max_manifest_bytes: u64,
    /// The largest image config.
    pub max_config_bytes: u64,
    /// The most layers in an image.
    pub max_layers: usize,
    /// The largest (compressed) layer.
    pub max_layer_bytes: u64,
    /// The most (compressed) bytes over all layers.
    pub max_total_bytes: u64,
}

impl Default for PullLimits {
    /// 4 MiB manifests and configs, 128 layers, 8 GiB per layer and 16 GiB in all.
    fn default() -> Self {
        PullLimits { max_manifest_bytes: 4 << 20, max_config_bytes: 4 << 20, max_layers: 128, max_layer_bytes: 8 << 30, max_total_bytes: 16 << 30 }
    }
}

/// A layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Its digest (of the compressed bytes, as stored).
    pub digest: Digest,
    /// Its compressed size.
    pub size: u64,
    /// How it is compressed.
    pub compression: Compression,
}

/// A reference resolved to one linux/amd64 image manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What was asked for.
    pub reference: Reference,
    /// The digest of the image manifest (what the image is, whatever the tag says later).
    pub manifest_digest: Digest,
    /// The config blob.
    pub config: (Digest, u64),
    /// The layers, lowest first.
    pub layers: Vec<LayerRef>,
}

/// An image whose blobs are in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The manifest it came from.
    pub resolved: Resolved,
    /// Its config.
    pub config: ImageConfig,
    /// The stored layer files, lowest first, with their compression.
    pub layers: Vec<(PathBuf, Compression)>,
}

/// Resolves `reference` to its linux/amd64 image manifest (one or two small requests).
pub fn resolve(reference: &Reference, limits: &PullLimits) -> Result<Resolved, PullError> {
    Session::new(reference)?.resolve(limits)
}

/// Resolves `reference` and fetches its config and layers into `store` (blobs already there
/// are not fetched), writing partial downloads in `tmp` (on the store's filesystem).
pub fn pull(reference: &Reference, store: &Store, tmp: &Path, limits: &PullLimits, progress: crate::Progress<'_>) -> Result<PulledImage, PullError> {
    let mut s = Session::new(reference)?;
    let resolved = s.resolve(limits)?;
    let total: u64 = resolved.layers.iter().map(|l| l.size).sum();
    progress(&format!("pulling {reference}: manifest {}, {} layers, {} MiB", resolved.manifest_digest.short(), resolved.layers.len(), total.div_ceil(1 << 20)));
    let (cd, csize) = resolved.config.clone();
    if csize > limits.max_config_bytes {
        return Err(PullError::TooBig { what: format!("the image config {cd}"), max: limits.max_config_bytes });
    }
    let config_path = s.blob(&cd, csize, store, tmp, "the image config")?;
    let config_bytes = std::fs::read(&config_path).map_err(|source| PullError::Store { what: cd.to_string(), source })?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| PullError::Unsupported { what: format!("the image config {cd}"), detail: format!("not an image config: {e}") })?;
    if (!config.os.is_empty() && config.os != "linux") || (!config.architecture.is_empty() && config.architecture != "amd64") {
        return Err(PullError::Unsupported { what: reference.to_string(), detail: format!("the image is for {}/{}; kiln runs linux/amd64 guests", config.os, config.architecture) });
    }
    let mut layers = Vec::new();
    for (i, l) in resolved.layers.iter().enumerate() {
        let cached = store.contains(&l.digest);
        progress(&format!("  layer {}/{} {} ({:.1} MiB){}", i + 1, resolved.layers.len(), l.digest.short(), l.size as f64 / 1048576.0, if cached { ", cached" } else { "" }));
        let path = s.blob(&l.digest, l.size, store, tmp, &format!("layer {}", i + 1))?;
        layers.push((path, l.compression));
    }
    Ok(PulledImage { resolved, config, layers })
}

/// One registry conversation: the agent and the authorization it earned.
struct Session {
    agent: ureq::Agent,
    reference: Reference,
    authorization: Option<String>,
    credentials: Option<Credentials>,
}

impl Session {
    fn new(reference: &Reference) -> Result<Session, PullError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .redirects(5)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Session { agent, reference: reference.clone(), authorization: None, credentials: docker_credentials(&reference.registry) })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.reference.base_url(), self.reference.repository)
    }

    /// A GET that answers one authentication challenge.
    fn get(&mut self, url: &str, accept: Option<&str>) -> Result<ureq::Response, PullError> {
        for attempt in 0..2 {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(h) = &self.authorization {
                req = req.set("Authorization", h);
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if attempt == 0 => {
                    let challenge = r.header("www-authenticate").map(str::to_owned);
                    self.authenticate(challenge.as_deref(), url)?;
                }
                Err(ureq::Error::Status(status, _)) => return Err(PullError::Status { url: url.to_owned(), status }),
                Err(ureq::Error::Transport(t)) => return Err(PullError::Transport { url: url.to_owned(), detail: t.to_string() }),
            }
        }
        Err(PullError::Status { url: url.to_owned(), status: 401 })
    }

    fn authenticate(&mut self, challenge: Option<&str>, url: &str) -> Result<(), PullError> {
        let auth_err = |detail: String| PullError::Auth { url: url.to_owned(), detail };
        let where_creds = || docker_config_path().map(|p| p.display().to_string()).unwrap_or_else(|| "the docker config file".into());
        match challenge.and_then(auth::parse_challenge) {
            Some(auth::Challenge::Basic) => {
                let c = self.credentials.as_ref().ok_or_else(|| auth_err(format!("the registry asks for a user name and password, and {} has none for {}", where_creds(), self.reference.registry)))?;
                self.authorization = Some(c.basic());
                Ok(())
            }
            Some(auth::Challenge::Bearer { realm, service, scope }) => {
                let realm_ok = realm.starts_with("https://") || (realm.starts_with("http://") && Reference::parse(&format!("{}/x", realm_host(&realm))).is_ok_and(|r| r.is_loopback()));
                if !realm_ok {
                    return Err(auth_err(format!("the token service {realm:?} is not HTTPS (plain HTTP only on loopback)")));
                }
                let mut req = self.agent.get(&realm);
                if let Some(s) = &service {
                    req = req.query("service", s);
                }
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                req = req.query("scope", &scope);
                if let Some(c) = &self.credentials {
                    req = req.set("Authorization", &c.basic());
                }
                let resp = req.call().map_err(|e| match e {
                    ureq::Error::Status(status, _) => auth_err(format!("the token service answered {status}{}", if self.credentials.is_none() { format!(" (no credentials for {} in {})", self.reference.registry, where_creds()) } else { String::new() })),
                    ureq::Error::Transport(t) => auth_err(format!("cannot reach the token service: {t}")),
                })?;
                let body = read_capped(resp, 64 << 10, "the token service's answer")?;
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| auth_err("the token service's answer is not JSON".into()))?;
                let token = v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
                let token = token.ok_or_else(|| auth_err("the token service's answer has no token".into()))?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            None => Err(auth_err("the registry asks for authentication of an unknown kind".into())),
        }
    }

    /// Fetches a manifest or index by tag or digest; returns its bytes, digest and content type.
    fn manifest(&mut self, reference: &str, limits: &PullLimits) -> Result<(Vec<u8>, Digest, Option<String>), PullError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.get(&url, Some(&manifest::accept()))?;
        let ct = resp.header("content-type").map(str::to_owned);
        let bytes = read_capped(resp, limits.max_manifest_bytes, &format!("the manifest {reference}"))?;
        let digest = Digest::of_bytes(&bytes);
        Ok((bytes, digest, ct))
    }

    fn resolve(&mut self, limits: &PullLimits) -> Result<Resolved, PullError> {
        let r = self.reference.clone();
        let what = r.to_string();
        let (bytes, digest, ct) = self.manifest(&r.manifest_ref(), limits)?;
        if let Some(want) = &r.digest {
            if &digest != want {
                return Err(PullError::Mismatch { what: what.clone(), detail: format!("the registry sent a manifest of digest {digest}, not {want}") });
            }
        }
        let (config, layers, manifest_digest) = match manifest::parse(&bytes, ct.as_deref(), &what)? {
            manifest::Parsed::Manifest { config, layers } => (config, layers, digest),
            manifest::Parsed::Index(entries) => {
                let entry = manifest::pick_platform(&entries, &what)?.clone();
                let want = entry.sha256(&what)?;
                let (bytes, got, ct) = self.manifest(&want.to_string(), limits)?;
                if got != want || bytes.len() as u64 != entry.size {
                    return Err(PullError::Mismatch { what: what.clone(), detail: format!("the linux/amd64 manifest is {got} of {} bytes, the index says {want} of {}", bytes.len(), entry.size) });
                }
                match manifest::parse(&bytes, ct.as_deref(), &what)? {
                    manifest::Parsed::Manifest { config, layers } => (config, layers, got),
                    manifest::Parsed::Index(_) => return Err(PullError::Unsupported { what, detail: "an index inside an index".into() }),
                }
            }
        };
        if layers.len() > limits.max_layers {
            return Err(PullError::Unsupported { what, detail: format!("{} layers (the cap is {})", layers.len(), limits.max_layers) });
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        for (i, l) in layers.iter().enumerate() {
            let lwhat = format!("{what} layer {}", i + 1);
            if l.size > limits.max_layer_bytes {
                return Err(PullError::TooBig { what: lwhat, max: limits.max_layer_bytes });
            }
            total = total.saturating_add(l.size);
            if total > limits.max_total_bytes {
                return Err(PullError::TooBig { what: format!("the layers of {what}"), max: limits.max_total_bytes });
            }
            out.push(LayerRef { digest: l.sha256(&lwhat)?, size: l.size, compression: manifest::compression(&l.media_type, &lwhat)? });
        }
        Ok(Resolved { reference: r, manifest_digest, config: (config.sha256(&what)?, config.size), layers: out })
    }

    /// A blob in the store: fetched unless already there, checked against its size and digest.
    fn blob(&mut self, digest: &Digest, size: u64, store: &Store, tmp: &Path, what: &str) -> Result<PathBuf, PullError> {
        if store.contains(digest) {
            return Ok(store.path(digest));
        }
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.get(&url, None)?;
        let store_err = |source| PullError::Store { what: what.to_owned(), source };
        std::fs::create_dir_all(tmp).map_err(store_err)?;
        let part = tmp.join(format!("blob-{}-{}", std::process::id(), digest.short()));
        let result = (|| {
            let mut out = std::fs::File::create(&part).map_err(store_err)?;
            let mut reader = resp.into_reader().take(size + 1);
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(|e| PullError::Transport { url: url.clone(), detail: e.to_string() })?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                if got > size {
                    return Err(PullError::Mismatch { what: what.to_owned(), detail: format!("more than the {size} bytes its manifest declares") });
                }
                hash.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(store_err)?;
            }
            if got != size {
                return Err(PullError::Mismatch { what: what.to_owned(), detail: format!("{got} bytes arrived, its manifest declares {size}") });
            }
            let got_digest = Digest::parse(&hex::encode(hash.finalize())).expect("sha256 hex");
            if &got_digest != digest {
                return Err(PullError::Mismatch { what: what.to_owned(), detail: format!("its bytes have digest {got_digest}, not {digest}") });
            }
            out.sync_all().map_err(store_err)?;
            store.put_verified(&part, digest).map_err(store_err)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }
}

fn realm_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn read_capped(resp: ureq::Response, max: u64, what: &str) -> Result<Vec<u8>, PullError> {
    let mut bytes = Vec::new();
    resp.into_reader().take(max + 1).read_to_end(&mut bytes).map_err(|e| PullError::Transport { url: what.to_owned(), detail: e.to_string() })?;
    if bytes.len() as u64 > max {
        return Err(PullError::TooBig { what: what.to_owned(), max });
    }
    Ok(bytes)
}
