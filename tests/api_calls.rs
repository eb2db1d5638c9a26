//! The product's Kubernetes client as a process sees it: a server that accepts connections but never
//! answers fails the run in bounded time, naming the server, and SIGTERM ends the process within its
//! grace period even while a call waits.

use std::time::{Duration, Instant};

use crate::harness::{TestEnv, logged_output};

/// A kubeconfig in `env`'s dir for a server on loopback that accepts connections and never answers.
fn silent_server(env: &TestEnv) -> (std::path::PathBuf, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept every connection and hold it open without a byte of answer.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            held.push(socket);
        }
    });
    let kubeconfig = env.dir().join("silent-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: silent\n\
             clusters: [{{name: silent, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: silent, context: {{cluster: silent, user: u}}}}]\n"
        ),
    )
    .unwrap();
    (kubeconfig, addr)
}

#[tokio::test]
async fn given_a_server_that_accepts_but_never_answers_when_run_then_it_fails_in_bounded_time_naming_the_server()
 {
    let env = TestEnv::new().await.unwrap();
    let (kubeconfig, addr) = silent_server(&env);

    let started = Instant::now();
    let out = logged_output(
        env.freezeframe(&["run", "--policies", "freezeframe/freezeframe-policies"])
            .env("KUBECONFIG", &kubeconfig)
            .env("FREEZEFRAME_KUBE_TIMEOUT", "1s")
            .env("FREEZEFRAME_KUBE_RETRIES", "2"),
    )
    .await;

    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}\n{stderr}");
    assert!(
        stderr.contains(&format!("no answer from the API server http://{addr}/ within 1s")),
        "{stderr}"
    );
}

#[tokio::test]
async fn given_a_call_waiting_on_a_silent_server_when_sigterm_then_the_process_ends_within_the_grace_period()
{
    let env = TestEnv::new().await.unwrap();
    let (kubeconfig, _) = silent_server(&env);
    let mut child = env
        .freezeframe(&[
            "backup",
            "--policies",
            "freezeframe/freezeframe-policies",
            "--policy",
            "app",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("FREEZEFRAME_KUBE_TIMEOUT", "10m")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SAFETY: kill(2) on the child's pid; no memory is touched.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(
        freezeframe::cli::SHUTDOWN_GRACE + Duration::from_secs(5),
        child.wait(),
    )
    .await
    .expect("the process ends within the grace period")
    .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
}
