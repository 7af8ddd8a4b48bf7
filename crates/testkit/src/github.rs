//! kiln's GitHub Action (`action.yml`, a composite action) run the way a GitHub runner runs
//! it: the step's `with:` inputs, each missing one given its default from `action.yml` (with
//! the few `${{ github.* }}` / `${{ runner.* }}` expressions the defaults use evaluated), the
//! composite step's `env:` built from them, the runner's own variables (`GITHUB_OUTPUT`,
//! `GITHUB_STEP_SUMMARY`, `RUNNER_TEMP`, `GITHUB_ACTION_PATH`, ...), and its `run:` line
//! executed with bash in the workspace. Nothing is faked but GitHub itself: the script and
//! `kiln ci run` are the real ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The action: `action.yml` of the repository at `root`.
pub struct Action {
    root: PathBuf,
    doc: serde_yaml::Value,
}

/// What a run of the action's step left.
#[derive(Debug)]
pub struct StepRun {
    /// The step's exit code.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// What it wrote to `$GITHUB_OUTPUT` (`name=value` lines).
    pub outputs: BTreeMap<String, String>,
    /// What it appended to `$GITHUB_STEP_SUMMARY`.
    pub summary: String,
    /// `$RUNNER_TEMP` of the run (removed with the `StepRun`).
    pub runner_temp: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Action {
    /// Loads `<root>/action.yml`.
    pub fn load(root: &Path) -> Action {
        let text = std::fs::read_to_string(root.join("action.yml")).expect("read action.yml");
        Action { root: root.to_owned(), doc: serde_yaml::from_str(&text).expect("action.yml is YAML") }
    }

    /// The inputs: name → (default, required).
    pub fn inputs(&self) -> BTreeMap<String, (Option<String>, bool)> {
        let map = self.doc["inputs"].as_mapping().expect("inputs");
        map.iter()
            .map(|(k, v)| {
                let default = v["default"].as_str().map(str::to_owned);
                (k.as_str().expect("input name").to_owned(), (default, v["required"].as_bool().unwrap_or(false)))
            })
            .collect()
    }

    /// The outputs: name → value expression.
    pub fn outputs(&self) -> BTreeMap<String, String> {
        let map = self.doc["outputs"].as_mapping().expect("outputs");
        map.iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v["value"].as_str().unwrap_or("").to_owned())).collect()
    }

    /// The composite's one step: its `env:` (name → expression) and its `run:` line.
    pub fn step(&self) -> (BTreeMap<String, String>, String) {
        assert_eq!(self.doc["runs"]["using"].as_str(), Some("composite"));
        let steps = self.doc["runs"]["steps"].as_sequence().expect("steps");
        assert_eq!(steps.len(), 1, "one step");
        let env = steps[0]["env"].as_mapping().expect("env");
        let env = env.iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v.as_str().unwrap_or("").to_owned())).collect();
        (env, steps[0]["run"].as_str().expect("run").to_owned())
    }

    /// Runs the step in `workspace` with inputs `with` and the caller step's `env` (for
    /// secrets), `path` first on PATH.
    pub fn run(&self, workspace: &Path, with: &[(&str, &str)], env: &[(&str, String)], path: &Path) -> StepRun {
        let tmp = tempfile::tempdir().unwrap();
        let runner_temp = tmp.path().join("runner-temp");
        std::fs::create_dir(&runner_temp).unwrap();
        let (output, summary) = (tmp.path().join("output"), tmp.path().join("summary.md"));
        std::fs::write(&output, "").unwrap();
        std::fs::write(&summary, "").unwrap();
        let sha = String::from_utf8(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(workspace).output().unwrap().stdout).unwrap();
        let context = |expr: &str| -> String {
            match expr {
                "github.sha" => sha.trim().to_owned(),
                "github.workspace" => workspace.display().to_string(),
                "runner.temp" => runner_temp.display().to_string(),
                other => panic!("action.yml uses ${{{{ {other} }}}}, which this runner does not evaluate"),
            }
        };
        let inputs = self.inputs();
        for (k, _) in with {
            assert!(inputs.contains_key(*k), "the step passes input {k:?}, which action.yml does not declare");
        }
        let mut values = BTreeMap::new();
        for (name, (default, required)) in &inputs {
            let value = match with.iter().find(|(k, _)| k == name) {
                Some((_, v)) => (*v).to_owned(),
                None => {
                    assert!(!required, "input {name} is required");
                    eval(default.as_deref().unwrap_or(""), &|e| context(e))
                }
            };
            values.insert(name.clone(), value);
        }
        let (step_env, run) = self.step();
        let mut cmd = Command::new("bash");
        cmd.arg("-e").arg("-c").arg(&run).current_dir(workspace);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        for (k, expr) in &step_env {
            let v = eval(expr, &|e| match e.strip_prefix("inputs.") {
                Some(name) => values.get(name).cloned().unwrap_or_else(|| panic!("env {k} names undeclared input {name}")),
                None => context(e),
            });
            cmd.env(k, v);
        }
        let system_path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{system_path}", path.display()))
            .env("CI", "true")
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_ACTION_PATH", &self.root)
            .env("GITHUB_WORKSPACE", workspace)
            .env("GITHUB_SHA", sha.trim())
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("RUNNER_TEMP", &runner_temp);
        let o = cmd.output().expect("run the action's step");
        let outputs = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        StepRun {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            outputs,
            summary: std::fs::read_to_string(&summary).unwrap(),
            runner_temp,
            _tmp: tmp,
        }
    }
}

/// Names and values, in order.
pub type Pairs = Vec<(String, String)>;

/// The step of a workflow (YAML text) that `uses:` an action whose reference starts with
/// `uses`: its `with:` and `env:`, each value with its `${{ expr }}`s replaced by
/// `context(expr)`.
pub fn workflow_step(workflow: &str, uses: &str, context: &dyn Fn(&str) -> String) -> (Pairs, Pairs) {
    let doc: serde_yaml::Value = serde_yaml::from_str(workflow).expect("the workflow is YAML");
    let jobs = doc["jobs"].as_mapping().expect("jobs");
    let step = jobs
        .values()
        .flat_map(|j| j["steps"].as_sequence().cloned().unwrap_or_default())
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(uses)))
        .unwrap_or_else(|| panic!("no step uses {uses}"));
    let pairs = |v: &serde_yaml::Value| -> Pairs {
        v.as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_yaml::Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                        };
                        (k.as_str().unwrap().to_owned(), eval(&text, context))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    (pairs(&step["with"]), pairs(&step["env"]))
}

/// `text` with each `${{ expr }}` replaced by `value(expr)`.
fn eval(text: &str, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let end = rest[start..].find("}}").expect("an expression ends") + start;
        out.push_str(&rest[..start]);
        out.push_str(&value(rest[start + 3..end].trim()));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn expressions_are_replaced() {
        let v = |e: &str| format!("<{e}>");
        assert_eq!(super::eval("${{ runner.temp }}/out", &v), "<runner.temp>/out");
        assert_eq!(super::eval("a ${{x}} b ${{ y }}", &v), "a <x> b <y>");
        assert_eq!(super::eval("plain", &v), "plain");
    }
}
