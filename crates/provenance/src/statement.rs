//! The in-toto Statement v1 with a SLSA provenance v1 predicate, and how kiln fills it in from
//! the facts of a run ([`BuildFacts`] → [`statement()`]).
//!
//! Field names follow <https://slsa.dev/spec/v1.0/provenance> and
//! <https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::time::rfc3339;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of a kiln CI run: says how to read `externalParameters`.
pub const BUILD_TYPE: &str = "https://kiln.dev/ci/v1";
/// `name` of the resolved dependency that is the source repository.
pub const DEP_SOURCE: &str = "source";
/// `name` of the resolved dependency that is the template (guest root filesystem).
pub const DEP_TEMPLATE: &str = "template";
/// `name` of the resolved dependency that is the snapshot the build started from.
pub const DEP_SNAPSHOT: &str = "snapshot";

/// What the runner knows about a finished run; everything the statement says comes from here.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildFacts {
    /// The repository, as the user named it (URL or path).
    pub repo: String,
    /// The ref that was asked for (`refs/heads/main`, a tag, ...).
    pub git_ref: String,
    /// The commit the ref resolved to (hex).
    pub commit: String,
    /// The build command.
    pub build: String,
    /// The setup command, if any.
    pub setup: Option<String>,
    /// The matrix cell: KEY → value (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
    /// The template's name.
    pub template: String,
    /// The template's sha256 (hex, optionally prefixed `sha256:`).
    pub template_digest: String,
    /// The sha256 of the snapshot the build was restored from, if any.
    pub snapshot_digest: Option<String>,
    /// Who built it: a URI naming this kiln host / deployment.
    pub builder_id: String,
    /// This run's id.
    pub invocation_id: String,
    /// When the run started.
    pub started: SystemTime,
    /// When the run finished.
    pub finished: SystemTime,
    /// The artifacts: (name, sha256 hex, optionally prefixed `sha256:`).
    pub artifacts: Vec<(String, String)>,
    /// Independent rebuilds of the same cell (`kiln ci run --rebuild N`), if any.
    pub reproduced: Option<Reproduced>,
}

/// How many independent builds of a cell ran and how many produced exactly the artifacts the
/// statement names (the first build's; it counts itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reproduced {
    /// Builds run, each in its own VM.
    pub builds: u32,
    /// Builds whose artifacts all had the subjects' digests.
    pub agreed: u32,
}

/// `name` of the `runDetails.byproducts` entry that records [`Reproduced`].
pub const BYPRODUCT_REPRODUCIBILITY: &str = "reproducibility";

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The artifacts this statement is about.
    pub subject: Vec<ResourceDescriptor>,
    /// Always [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The SLSA provenance.
    pub predicate: Provenance,
}

/// An in-toto ResourceDescriptor (the fields kiln uses).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// Where the resource is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm → hex digest (`sha256`, `gitCommit`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    /// A name distinguishing it from other descriptors (file name for subjects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form facts about the resource.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

/// SLSA provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built and from what.
    pub build_definition: BuildDefinition,
    /// Who built it, when.
    pub run_details: RunDetails,
}

/// SLSA `buildDefinition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`] for kiln.
    pub build_type: String,
    /// The user-controlled inputs.
    pub external_parameters: ExternalParameters,
    /// Builder-controlled inputs, free-form.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub internal_parameters: serde_json::Map<String, serde_json::Value>,
    /// The source commit, the template and the snapshot, by digest.
    #[serde(default)]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// `externalParameters` for [`BUILD_TYPE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    /// The repository.
    pub repo: String,
    /// The ref asked for.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The build command.
    pub build: String,
    /// The setup command (`null` without one).
    #[serde(default)]
    pub setup: Option<String>,
    /// The matrix cell (`{}` without a matrix).
    #[serde(default)]
    pub matrix: BTreeMap<String, String>,
    /// The template's name.
    pub template: String,
}

/// SLSA `runDetails`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// The invocation.
    pub metadata: BuildMetadata,
    /// What the run produced besides the subjects: kiln records its rebuilds here
    /// ([`BYPRODUCT_REPRODUCIBILITY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// SLSA `runDetails.builder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// The builder's id (a URI).
    pub id: String,
}

/// SLSA `runDetails.metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    /// This run's id.
    pub invocation_id: String,
    /// Start, RFC 3339 UTC.
    pub started_on: String,
    /// End, RFC 3339 UTC.
    pub finished_on: String,
}

/// The statement for a run.
pub fn statement(f: &BuildFacts) -> Statement {
    let subject = f
        .artifacts
        .iter()
        .map(|(name, digest)| ResourceDescriptor { digest: sha256(digest), name: Some(name.clone()), ..Default::default() })
        .collect();
    let byproducts = f
        .reproduced
        .map(|r| {
            let annotations = serde_json::json!({ "builds": r.builds, "agreed": r.agreed, "reproducible": r.agreed == r.builds });
            ResourceDescriptor {
                name: Some(BYPRODUCT_REPRODUCIBILITY.into()),
                annotations: annotations.as_object().cloned().unwrap_or_default(),
                ..Default::default()
            }
        })
        .into_iter()
        .collect();
    let mut deps = vec![
        ResourceDescriptor {
            uri: Some(source_uri(&f.repo, &f.git_ref)),
            digest: BTreeMap::from([("gitCommit".to_string(), f.commit.trim().to_ascii_lowercase())]),
            name: Some(DEP_SOURCE.into()),
            ..Default::default()
        },
        ResourceDescriptor {
            uri: Some(format!("kiln:template/{}", f.template)),
            digest: sha256(&f.template_digest),
            name: Some(DEP_TEMPLATE.into()),
            ..Default::default()
        },
    ];
    if let Some(s) = &f.snapshot_digest {
        deps.push(ResourceDescriptor {
            uri: Some(format!("kiln:snapshot/{}", f.template)),
            digest: sha256(s),
            name: Some(DEP_SNAPSHOT.into()),
            ..Default::default()
        });
    }
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject,
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: ExternalParameters {
                    repo: f.repo.clone(),
                    git_ref: f.git_ref.clone(),
                    build: f.build.clone(),
                    setup: f.setup.clone(),
                    matrix: f.matrix.clone(),
                    template: f.template.clone(),
                },
                internal_parameters: serde_json::Map::new(),
                resolved_dependencies: deps,
            },
            run_details: RunDetails {
                builder: Builder { id: f.builder_id.clone() },
                metadata: BuildMetadata {
                    invocation_id: f.invocation_id.clone(),
                    started_on: rfc3339(f.started),
                    finished_on: rfc3339(f.finished),
                },
                byproducts,
            },
        },
    }
}

impl Statement {
    /// Adds a builder-controlled parameter (`internalParameters.<key>`).
    pub fn with_internal_parameter(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Statement {
        self.predicate.build_definition.internal_parameters.insert(key.into(), value.into());
        self
    }

    /// The resolved dependency with this `name`.
    pub fn dependency(&self, name: &str) -> Option<&ResourceDescriptor> {
        self.predicate.build_definition.resolved_dependencies.iter().find(|d| d.name.as_deref() == Some(name))
    }

    /// The rebuilds recorded in `runDetails.byproducts`, if any (`None` also when the entry's
    /// annotations are not two counts with `agreed <= builds`).
    pub fn reproduced(&self) -> Option<Reproduced> {
        let b = self.predicate.run_details.byproducts.iter().find(|b| b.name.as_deref() == Some(BYPRODUCT_REPRODUCIBILITY))?;
        let count = |k: &str| b.annotations.get(k).and_then(serde_json::Value::as_u64).and_then(|n| u32::try_from(n).ok());
        let r = Reproduced { builds: count("builds")?, agreed: count("agreed")? };
        (r.agreed <= r.builds).then_some(r)
    }

    /// The source commit (the `gitCommit` of the source dependency).
    pub fn commit(&self) -> Option<&str> {
        self.dependency(DEP_SOURCE).and_then(|d| d.digest.get("gitCommit")).map(String::as_str)
    }
}

/// `{sha256: hex}` from hex with or without a `sha256:` prefix.
fn sha256(digest: &str) -> BTreeMap<String, String> {
    let d = digest.trim();
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    BTreeMap::from([("sha256".to_string(), hex.to_ascii_lowercase())])
}

/// The SPDX-style download location of a git source: `git+<url>@<ref>`.
fn source_uri(repo: &str, git_ref: &str) -> String {
    let url = if repo.starts_with("git+") {
        repo.to_string()
    } else if repo.contains("://") {
        format!("git+{repo}")
    } else if repo.starts_with('/') {
        format!("git+file://{repo}")
    } else {
        format!("git+{repo}")
    };
    format!("{url}@{git_ref}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn facts() -> BuildFacts {
        BuildFacts {
            repo: "https://github.com/acme/widget".into(),
            git_ref: "refs/heads/main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            build: "make dist".into(),
            setup: None,
            matrix: BTreeMap::from([("RUST".into(), "1.80".into()), ("OS".into(), "debian".into())]),
            template: "debian-12".into(),
            template_digest: format!("sha256:{}", "AB".repeat(32)),
            snapshot_digest: Some("cd".repeat(32)),
            builder_id: "https://kiln.dev/builder/host-1".into(),
            invocation_id: "run-42".into(),
            started: UNIX_EPOCH + Duration::from_secs(1_714_564_800),
            finished: UNIX_EPOCH + Duration::from_secs(1_714_564_861),
            artifacts: vec![("widget.tar.gz".into(), "11".repeat(32)), ("widget.sha".into(), "22".repeat(32))],
            reproduced: None,
        }
    }

    #[test]
    fn json_shape_follows_slsa_v1() {
        let v = serde_json::to_value(statement(&facts())).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], PREDICATE_TYPE);
        assert_eq!(v["subject"][0]["name"], "widget.tar.gz");
        assert_eq!(v["subject"][1]["digest"]["sha256"], "22".repeat(32));
        let bd = &v["predicate"]["buildDefinition"];
        assert_eq!(bd["buildType"], BUILD_TYPE);
        let ep = &bd["externalParameters"];
        assert_eq!(ep["repo"], "https://github.com/acme/widget");
        assert_eq!(ep["ref"], "refs/heads/main");
        assert_eq!(ep["build"], "make dist");
        assert!(ep["setup"].is_null() && ep.as_object().unwrap().contains_key("setup"));
        assert_eq!(ep["matrix"], serde_json::json!({"OS": "debian", "RUST": "1.80"}));
        assert_eq!(ep["template"], "debian-12");
        assert!(bd.get("internalParameters").is_none());
        let deps = bd["resolvedDependencies"].as_array().unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[0]["uri"], "git+https://github.com/acme/widget@refs/heads/main");
        assert_eq!(deps[0]["digest"]["gitCommit"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(deps[1]["digest"]["sha256"], "ab".repeat(32), "prefix stripped, lowercased");
        assert_eq!(deps[2]["name"], "snapshot");
        let rd = &v["predicate"]["runDetails"];
        assert_eq!(rd["builder"]["id"], "https://kiln.dev/builder/host-1");
        assert_eq!(rd["metadata"]["invocationId"], "run-42");
        assert_eq!(rd["metadata"]["startedOn"], "2024-05-01T12:00:00Z");
        assert_eq!(rd["metadata"]["finishedOn"], "2024-05-01T12:01:01Z");
        assert!(rd.get("byproducts").is_none(), "no rebuilds, no byproducts");
    }

    #[test]
    fn rebuilds_are_a_byproduct() {
        let f = BuildFacts { reproduced: Some(Reproduced { builds: 3, agreed: 3 }), ..facts() };
        let s = statement(&f);
        let v = serde_json::to_value(&s).unwrap();
        let b = &v["predicate"]["runDetails"]["byproducts"][0];
        assert_eq!(b["name"], BYPRODUCT_REPRODUCIBILITY);
        assert_eq!(b["annotations"], serde_json::json!({"builds": 3, "agreed": 3, "reproducible": true}));
        let back: Statement = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.reproduced(), Some(Reproduced { builds: 3, agreed: 3 }));
        let split = statement(&BuildFacts { reproduced: Some(Reproduced { builds: 2, agreed: 1 }), ..facts() });
        assert_eq!(serde_json::to_value(&split).unwrap()["predicate"]["runDetails"]["byproducts"][0]["annotations"]["reproducible"], false);
        // Counts that make no sense are no record.
        let mut bad = v;
        bad["predicate"]["runDetails"]["byproducts"][0]["annotations"]["agreed"] = 9.into();
        assert_eq!(serde_json::from_value::<Statement>(bad).unwrap().reproduced(), None);
        assert_eq!(statement(&facts()).reproduced(), None);
    }

    #[test]
    fn optional_parts() {
        let mut f = facts();
        f.snapshot_digest = None;
        f.matrix.clear();
        f.setup = Some("apt-get install -y make".into());
        f.repo = "/srv/git/widget".into();
        let s = statement(&f).with_internal_parameter("vcpus", 2);
        let v = serde_json::to_value(&s).unwrap();
        let bd = &v["predicate"]["buildDefinition"];
        assert_eq!(bd["externalParameters"]["matrix"], serde_json::json!({}));
        assert_eq!(bd["externalParameters"]["setup"], "apt-get install -y make");
        assert_eq!(bd["internalParameters"]["vcpus"], 2);
        assert_eq!(bd["resolvedDependencies"].as_array().unwrap().len(), 2);
        assert_eq!(bd["resolvedDependencies"][0]["uri"], "git+file:///srv/git/widget@refs/heads/main");
        assert_eq!(s.commit(), Some("0123456789abcdef0123456789abcdef01234567"));
        // Round trip through JSON.
        let back: Statement = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
