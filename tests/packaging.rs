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
