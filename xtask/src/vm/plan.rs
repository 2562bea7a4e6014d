//! What the guest runs: a shell command, or the host-built integration test
//! binaries (`TestPlan`), as the script the guest's `/init` executes.
use std::{
    collections::HashSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use super::quote;
use crate::exec;

pub(super) enum Payload {
    Shell(String),
    Tests(TestPlan),
}

/// One pass of the test binaries in the guest: with `TRACER_PROBES` set to
/// `probes` ("" leaves the choice to the tracer), and `args`, of which test
/// target names select binaries and the rest go to each (libtest filters
/// such as `spans::`, `--skip`, …).
#[derive(Clone, Debug)]
pub struct TestRun {
    pub probes: String,
    pub args: Vec<String>,
}

impl TestRun {
    /// The same arguments once per probe set (once, with the tracer's own
    /// choice, when none is named).
    pub fn per_probe_set(probes: &[String], args: &[String]) -> Vec<TestRun> {
        let sets = if probes.is_empty() {
            vec![String::new()]
        } else {
            probes.to_vec()
        };
        sets.into_iter()
            .map(|probes| TestRun {
                probes,
                args: args.to_vec(),
            })
            .collect()
    }
}

/// Host-built test binaries and the passes `cargo xtask test` runs of them.
pub(super) struct TestPlan {
    tracer: PathBuf,
    passes: Vec<Pass>,
}

/// A [`TestRun`] resolved: the binaries it selects and what goes to each.
struct Pass {
    probes: String,
    binaries: Vec<(String, PathBuf)>,
    args: Vec<String>,
}

impl TestPlan {
    pub(super) fn build(root: &Path, runs: &[TestRun]) -> Result<TestPlan> {
        let tracer = crate::build(root)?;
        let out = exec::cargo(root)
            .args(crate::INTEGRATION_TESTS)
            .arg("--no-run")
            .args(["--message-format", "json-render-diagnostics"])
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo test --no-run")?;
        if !out.status.success() {
            bail!("building the integration tests failed: {}", out.status);
        }
        let mut binaries = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.contains(r#""reason":"compiler-artifact""#)
                || !line.contains(r#""kind":["test"]"#)
            {
                continue;
            }
            let Some(executable) = json_string(line, "executable") else {
                continue;
            };
            let path = PathBuf::from(executable);
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            let name = file.rsplit_once('-').map_or(&*file, |(name, _)| name);
            binaries.push((name.to_string(), path.clone()));
        }
        binaries.sort();
        if binaries.is_empty() {
            bail!("cargo test --no-run reported no integration test binaries");
        }
        let names: HashSet<String> = binaries.iter().map(|(name, _)| name.clone()).collect();
        let passes = runs
            .iter()
            .map(|run| {
                let (selected, args): (Vec<String>, Vec<String>) = run
                    .args
                    .iter()
                    .cloned()
                    .partition(|arg| names.contains(arg));
                let binaries = binaries
                    .iter()
                    .filter(|(name, _)| selected.is_empty() || selected.contains(name))
                    .cloned()
                    .collect();
                Pass {
                    probes: run.probes.clone(),
                    binaries,
                    args,
                }
            })
            .collect();
        Ok(TestPlan { tracer, passes })
    }
}

/// A JSON string field's value (no escapes in the paths cargo prints here).
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":\"");
    let start = line.find(&needle)? + needle.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

impl Payload {
    /// The script the guest runs (as `/bin/sh`, in the host's root);
    /// `patience` is what it exports as `TRACER_TEST_PATIENCE`.
    pub(super) fn script(&self, root: &Path, patience: u32) -> String {
        let mut script = String::from("# written by cargo xtask vm-test\n");
        // How much slower than a host this guest runs: the tests scale their
        // wait ceilings by it (10 under TCG, 1 under KVM).
        let _ = writeln!(script, "export TRACER_TEST_PATIENCE={patience}");
        match self {
            Payload::Shell(shell) => {
                let _ = writeln!(script, "cd {}", quote(&root.to_string_lossy()));
                script.push_str(shell);
                script.push('\n');
            }
            Payload::Tests(plan) => {
                // As `cargo xtask test`: cwd the package, TRACER_BIN, HARNESS_VENV.
                let harness = root.join("harness");
                let _ = writeln!(script, "cd {}", quote(&harness.to_string_lossy()));
                let _ = writeln!(
                    script,
                    "export TRACER_BIN={}",
                    quote(&plan.tracer.to_string_lossy())
                );
                let _ = writeln!(
                    script,
                    "export HARNESS_VENV={}",
                    quote(&root.join(".venv").to_string_lossy())
                );
                script.push_str("export RUST_BACKTRACE=1\nfailed=0\n");
                for pass in &plan.passes {
                    let probes = &pass.probes;
                    let args: Vec<String> = pass.args.iter().map(|arg| quote(arg)).collect();
                    let _ = writeln!(script, "export TRACER_PROBES={}", quote(probes));
                    for (name, path) in &pass.binaries {
                        let name = if probes.is_empty() {
                            name.clone()
                        } else {
                            format!("{name}@{probes}")
                        };
                        let _ = writeln!(
                            script,
                            "echo 'VM-TEST-BIN-START {name}'\n{} --test-threads=1 {}\nrc=$?\n\
                             echo \"VM-TEST-BIN-END {name} $rc\"\n[ $rc -eq 0 ] || failed=1",
                            quote(&path.to_string_lossy()),
                            args.join(" ")
                        );
                    }
                }
                script.push_str("exit $failed\n");
            }
        }
        script
    }
}
