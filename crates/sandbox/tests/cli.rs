//! The `sandbox` binary as a user runs it: ready line on stdout, manifests loaded, clean exit on SIGTERM.

use std::process::Stdio;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn given_sandbox_command_when_started_with_manifests_then_ready_line_serves_kubectl_and_sigterm_stops_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--manifests")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ready.contains("sandbox ready"), "{ready}");

    // The CRD and its instance from one file are both loaded (the loader applies in order).
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["get", "carts,statefulsets", "-n", "shop", "-o", "name"])
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cart.shop.example.com/cart-1") && text.contains("statefulset.apps/db"),
        "{text}"
    );

    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
