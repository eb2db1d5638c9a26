//! The image and the deployment manifests agree with the binary: what the Dockerfile and every
//! freezeframe container in `manifests/` run is a command line the CLI accepts, as a non-root user.

use clap::Parser;
use freezeframe::cli::Cli;
use serde::Deserialize;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The instructions of the Dockerfile's last stage, as (INSTRUCTION, rest of line), continuations joined.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if let Some((instruction, rest)) = current.split_once(' ') {
            lines.push((instruction.to_uppercase(), rest.trim().to_string()));
        }
        current.clear();
    }
    let last_from = lines.iter().rposition(|(i, _)| i == "FROM").expect("a FROM");
    lines.split_off(last_from)
}

fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{rest:?} is not the JSON exec form: {e}"))
}

#[test]
fn given_dockerfile_when_read_then_image_runs_the_binary_as_numeric_nonroot_user_with_a_valid_default_command()
 {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let stage = final_stage(&text);
    let get = |name: &str| {
        stage
            .iter()
            .rev()
            .find(|(i, _)| i == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("the final stage has no {name}"))
    };

    let entrypoint = exec_form(&get("ENTRYPOINT"));
    assert_eq!(entrypoint.len(), 1, "{entrypoint:?}");
    let copied = stage
        .iter()
        .filter(|(i, _)| i == "COPY")
        .any(|(_, r)| r.starts_with("--from=") && r.ends_with(&format!(" {}", entrypoint[0])));
    assert!(
        copied,
        "the entrypoint {} is copied from the build stage",
        entrypoint[0]
    );

    let cmd = exec_form(&get("CMD"));
    let argv = std::iter::once("freezeframe".to_string()).chain(cmd);
    Cli::try_parse_from(argv).expect("the image's default command parses");

    let user = get("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric uid (runAsNonRoot checks it)");
    assert_ne!(uid, 0, "the image does not run as root");
}

#[derive(Deserialize)]
struct Doc {
    kind: Option<String>,
    metadata: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Value,
}

/// Every container spec below `value` (pod templates of CronJobs, Jobs, Deployments, ...).
fn containers(value: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "containers" {
                    out.extend(v.as_array().into_iter().flatten().cloned());
                } else {
                    containers(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| containers(v, out)),
        _ => {}
    }
}

#[test]
fn given_manifests_when_read_then_every_freezeframe_container_runs_a_command_line_the_cli_accepts() {
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{ROOT}/manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let Ok(doc) = Doc::deserialize(de) else { continue };
            let mut found = Vec::new();
            containers(&doc.rest, &mut found);
            for c in found {
                let image = c["image"].as_str().unwrap_or_default();
                if !image.starts_with("freezeframe:") {
                    continue;
                }
                let args: Vec<String> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                let argv = std::iter::once("freezeframe".to_string()).chain(args.clone());
                if let Err(e) = Cli::try_parse_from(argv) {
                    panic!(
                        "{} {:?} {}: args {args:?} are rejected by the CLI:\n{e}",
                        path.display(),
                        doc.kind,
                        doc.metadata
                            .as_ref()
                            .map(|m| m["name"].to_string())
                            .unwrap_or_default()
                    );
                }
                if c["securityContext"]["readOnlyRootFilesystem"] == serde_json::json!(true) {
                    let mounts_tmp = c["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| m["mountPath"] == "/tmp");
                    assert!(
                        mounts_tmp,
                        "{}: a read-only root needs a writable /tmp",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "the CronJob and the restore Job run freezeframe ({checked} found)"
    );
}

#[tokio::test]
async fn given_deployment_manifests_when_applied_to_the_sandbox_then_every_object_is_accepted() {
    let sb = freezeframe_sandbox::Sandbox::start(Default::default())
        .await
        .unwrap();
    let applied = sb
        .load_manifests(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/manifests"
        )))
        .unwrap();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"));
    let documents: usize = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .map(|d| <serde_yaml::Value as Deserialize>::deserialize(d).unwrap())
                .filter(|v| !v.is_null())
                .count()
        })
        .sum();
    assert!(documents >= 8, "manifests/ holds the deployment objects");
    assert_eq!(applied, documents, "every document in manifests/ is accepted");
}

/// The `cargo build` line of the Dockerfile's build stage, continuations joined.
fn dockerfile_build_command() -> String {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile builds with cargo build");
    let start = line.find("cargo build").unwrap();
    line[start..].split("&&").next().unwrap().trim().to_string()
}

#[test]
fn given_dockerfile_build_command_when_resolved_then_the_image_compiles_no_sandbox_crate() {
    let build = dockerfile_build_command();
    let words: Vec<&str> = build.split_whitespace().collect();
    assert!(
        words.windows(2).any(|w| w == ["-p", "freezeframe"]),
        "the image builds only the product crate: {build}"
    );
    assert!(
        !words
            .iter()
            .any(|w| w.starts_with("--features") || *w == "--all-features" || *w == "-F"),
        "the image enables no feature (the `demo` feature pulls in the sandbox): {build}"
    );
    // What that command compiles: the product's normal and build dependencies, default features.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "freezeframe",
            "-e",
            "normal,build",
        ])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tree.contains("freezeframe-selector"), "{tree}");
    assert!(
        !tree.contains("freezeframe-sandbox"),
        "the production build must not compile the sandbox:\n{tree}"
    );
}

#[test]
fn given_cli_when_help_is_built_then_it_offers_no_sandbox_and_demo_only_with_its_feature() {
    let command = <Cli as clap::CommandFactory>::command();
    let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
    assert!(!names.contains(&"sandbox"), "{names:?}");
    assert_eq!(names.contains(&"demo"), cfg!(feature = "demo"), "{names:?}");
}
