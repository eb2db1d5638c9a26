//! Dumps replay: after the restored pods are ready, every dump the backup holds whose policy dump has a
//! `restoreCommand` is streamed from the store into that command's stdin, by exec in the restored pod.
//!
//! - Which dumps: the manifest's Succeeded dump records whose dump (by name) in the policy has a
//!   `restoreCommand`, in namespaces the plan restores into (`--namespace-map` applied).
//! - Which pod: the pod of the same name in the target namespace (StatefulSet pods keep their names);
//!   for `runInSinglePod` dumps, the first usable pod by name among those the dump's selector matches.
//!   Usable = Running with the container ready, as for hooks and dumps.
//! - Integrity: the whole backup, dumps included, was verified before anything was written. Should the
//!   object change after that, a size mismatch refuses the replay before the pod is touched, and the
//!   bytes streamed are checked again on the way (size and sha256): a mismatch found at the end of the
//!   stream aborts it without closing stdin first and is reported as refused (the command may have
//!   read the bytes before the end).
//! - Each replay has the dump's `timeout`; one failing never stops the others, and makes the restore
//!   PartiallyFailed.
//!
//! RBAC: `pods` list and `pods/exec` create (and get) in the target namespaces.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::apply::{Failure, Report};
use super::plan::Plan;
use super::source::Located;
use crate::backup::{DumpRecord, DumpStatus};
use crate::hooks::{PodExecutor, Target, select};
use crate::policy::{Dump, Exec};
use crate::store::{ObjectStore, Written};

/// How a replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReplayStatus {
    /// The whole dump was streamed and the command exited 0.
    Succeeded,
    /// The command failed, timed out, or could not be started; or no pod to run it in.
    Failed,
    /// The stored bytes did not match the manifest: the stream was aborted.
    Refused,
}

/// One dump replayed into one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpReplay {
    /// The dump's name.
    pub dump: String,
    /// `namespace/pod` it was taken from.
    pub source: String,
    /// `namespace/pod` it was replayed into (empty when no pod was found).
    pub target: String,
    /// The container.
    pub container: String,
    /// Outcome.
    pub status: ReplayStatus,
    /// Bytes read from the store and passed on.
    pub bytes: u64,
    /// The command's exit code, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last 4 KiB of the command's stderr.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Replays dumps: the restore's view of an executor, a pod lister and the policy's dumps.
#[async_trait::async_trait]
pub trait Replay: Send + Sync {
    /// Whether any dump of `located` would be replayed into what `plan` restores (the restore then
    /// waits for the pods to be ready even without `wait`).
    fn replays_any(&self, located: &Located, plan: &Plan) -> bool;
    /// Replay the dumps of `located` that `plan` restores, recording each in `report`.
    async fn replay(&self, store: &dyn ObjectStore, located: &Located, plan: &Plan, report: &mut Report);
}

/// Lists the pods a replay may run in.
#[async_trait::async_trait]
pub trait Pods: Send + Sync {
    /// Usable targets (Running, container ready) among pods matching `dump`'s selector in `namespace`,
    /// sorted by name, with `container`.
    async fn usable(&self, namespace: &str, dump: &Dump, container: &str) -> Result<Vec<Target>, String>;
}

#[async_trait::async_trait]
impl Pods for kube::Client {
    async fn usable(&self, namespace: &str, dump: &Dump, container: &str) -> Result<Vec<Target>, String> {
        let pods = select::list_pods(self, &[namespace.to_string()], &dump.pod_selector)
            .await
            .map_err(|e| crate::k8s::errors::chain(&e))?;
        let selection =
            select::select_from(&pods, Some(container), false).map_err(|e| crate::k8s::errors::chain(&e))?;
        Ok(selection.targets)
    }
}

/// [`Replay`] through a [`PodExecutor`], with pods from `pods` and the policy's `dumps`.
pub struct Replayer<E, P> {
    executor: E,
    pods: P,
    dumps: Vec<Dump>,
}

impl<E: PodExecutor, P: Pods> Replayer<E, P> {
    /// Replay `dumps` (a policy's) by `executor` in pods listed by `pods`.
    pub fn new(executor: E, pods: P, dumps: Vec<Dump>) -> Self {
        Replayer {
            executor,
            pods,
            dumps,
        }
    }

    async fn one(
        &self,
        store: &dyn ObjectStore,
        located: &Located,
        record: &DumpRecord,
        dump: &Dump,
        namespace: &str,
        restore_command: &Exec,
    ) -> DumpReplay {
        let mut replay = DumpReplay {
            dump: record.name.clone(),
            source: format!("{}/{}", record.namespace, record.pod),
            target: String::new(),
            container: record.container.clone(),
            status: ReplayStatus::Failed,
            bytes: 0,
            exit_code: None,
            stderr: String::new(),
            message: None,
        };
        let target = match self.pods.usable(namespace, dump, &record.container).await {
            Ok(usable) => choose(&usable, dump, namespace, &record.pod),
            Err(e) => Err(format!("listing pods in {namespace}: {e}")),
        };
        let target = match target {
            Ok(t) => t,
            Err(message) => {
                replay.message = Some(message);
                return replay;
            }
        };
        replay.target = target.pod_ref();
        let (Some(size), Some(sha256)) = (record.size, record.sha256.clone()) else {
            replay.message = Some("the manifest records no size and sha256 for this dump".into());
            return replay;
        };
        let key = located.keys.artifact(&record.artifact);
        // A cheap check before the pod is touched: a truncated or grown object is refused outright.
        match store.head(&key).await {
            Ok(Some(stored)) if stored == size => {}
            Ok(stored) => {
                replay.status = ReplayStatus::Refused;
                let actual = stored.map_or_else(|| "no object".to_string(), |s| format!("{s} bytes"));
                replay.message = Some(format!(
                    "stored dump is corrupt or tampered: manifest says {size} bytes, store has {actual}; replay refused"
                ));
                return replay;
            }
            Err(e) => {
                replay.message = Some(format!("checking {key}: {}", crate::k8s::errors::chain(&e)));
                return replay;
            }
        }
        let reader = match store.get(&key).await {
            Ok(r) => r,
            Err(e) => {
                replay.message = Some(format!("reading {key}: {}", crate::k8s::errors::chain(&e)));
                return replay;
            }
        };
        let mut input = Verifying::new(reader, Written { size, sha256 });
        // The stored bytes are checked as they pass (Verifying); an encrypted dump is decrypted after
        // that check, and age authenticates every chunk before releasing its plaintext.
        let mut plain = match located.opening.reader(&key, &mut input).await {
            Ok(p) => p,
            Err(e) => {
                replay.status = ReplayStatus::Refused;
                replay.message = Some(format!("{key}: {}", crate::k8s::errors::chain(&e)));
                return replay;
            }
        };
        let argv = match restore_command {
            Exec::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Exec::Argv(a) => a.clone(),
        };
        tracing::info!(dump = %record.name, from = %replay.source, into = %replay.target, "replaying dump");
        let ran = self.executor.feed(&target, &argv, &mut plain, dump.timeout).await;
        drop(plain);
        replay.bytes = input.read;
        match ran {
            Err(e) => replay.message = Some(e.summary()),
            Ok(_) if input.mismatch.is_some() => {
                replay.status = ReplayStatus::Refused;
                replay.message = input.mismatch.take();
            }
            Ok(out) => {
                replay.stderr = out.stderr;
                if let crate::hooks::Termination::Exited(code) = out.termination {
                    replay.exit_code = Some(code);
                }
                if out.termination.is_success() {
                    replay.status = ReplayStatus::Succeeded;
                } else {
                    replay.message = Some(format!("restore command {}", out.termination));
                }
            }
        }
        replay
    }
}

/// The pod a dump taken from `pod` is replayed into, among `usable` targets in `namespace`.
pub fn choose(usable: &[Target], dump: &Dump, namespace: &str, pod: &str) -> Result<Target, String> {
    let found = if dump.run_in_single_pod {
        usable.iter().min_by(|a, b| a.pod.cmp(&b.pod))
    } else {
        usable.iter().find(|t| t.pod == pod)
    };
    found.cloned().ok_or_else(|| {
        if dump.run_in_single_pod {
            format!("no ready pod matches the dump's selector in {namespace}")
        } else {
            format!(
                "no ready pod {namespace}/{pod} matching the dump's selector (replay targets the pod of the same name, as StatefulSets keep; use runInSinglePod for other workloads)"
            )
        }
    })
}

/// The namespace a dump of `namespace` is replayed into, when the plan restores into it.
fn target_namespace(plan: &Plan, namespace: &str) -> Option<String> {
    let mapped = plan
        .namespaces
        .get(namespace)
        .cloned()
        .unwrap_or_else(|| namespace.to_string());
    plan.steps
        .iter()
        .any(|s| s.is_applied() && s.namespace.as_deref() == Some(mapped.as_str()))
        .then_some(mapped)
}

/// A dump to replay: its record, the policy's dump, its restore command and the target namespace.
type Pending<'a> = (&'a DumpRecord, &'a Dump, &'a Exec, String);

impl<E, P> Replayer<E, P> {
    /// The dumps of `located` this replayer replays into what `plan` restores; with `explain`, each
    /// dump left out is logged with the reason (once per restore: by [`Replay::replay`]).
    fn pending<'a>(&'a self, located: &'a Located, plan: &Plan, explain: bool) -> Vec<Pending<'a>> {
        let skip = |dump: &str, why: &str| {
            if explain {
                tracing::info!(dump, "{why}: not replayed");
            }
        };
        let mut out = Vec::new();
        for record in located
            .manifest
            .dumps
            .iter()
            .filter(|r| r.status == DumpStatus::Succeeded)
        {
            let Some(dump) = self.dumps.iter().find(|d| d.name == record.name) else {
                skip(&record.name, "dump not in the policy");
                continue;
            };
            let Some(command) = &dump.restore_command else {
                skip(&record.name, "dump has no restoreCommand");
                continue;
            };
            let Some(namespace) = target_namespace(plan, &record.namespace) else {
                skip(
                    &record.name,
                    &format!("its namespace {} is not restored", record.namespace),
                );
                continue;
            };
            out.push((record, dump, command, namespace));
        }
        out
    }
}

#[async_trait::async_trait]
impl<E: PodExecutor, P: Pods> Replay for Replayer<E, P> {
    fn replays_any(&self, located: &Located, plan: &Plan) -> bool {
        !self.pending(located, plan, false).is_empty()
    }

    async fn replay(&self, store: &dyn ObjectStore, located: &Located, plan: &Plan, report: &mut Report) {
        for (record, dump, command, namespace) in self.pending(located, plan, true) {
            let replay = self.one(store, located, record, dump, &namespace, command).await;
            if replay.status != ReplayStatus::Succeeded {
                let object = if replay.target.is_empty() {
                    format!("{namespace}/{}", record.pod)
                } else {
                    replay.target.clone()
                };
                let message = replay.message.clone().unwrap_or_default();
                tracing::warn!(dump = %record.name, %object, %message, "dump replay failed");
                report.failures.push(Failure {
                    kind: "dumps".into(),
                    object,
                    message: format!("dump {}: {message}", record.name),
                });
            }
            report.dumps.push(replay);
        }
    }
}

/// Passes a stored dump through, counting and hashing it; at the end (or once it is too long) a
/// mismatch with the manifest is a read error, never a clean end of input.
struct Verifying<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Written,
    mismatch: Option<String>,
}

impl<R> Verifying<R> {
    fn new(inner: R, expected: Written) -> Self {
        Verifying {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected,
            mismatch: None,
        }
    }

    fn refuse(&mut self, actual: String) -> io::Error {
        let message = format!(
            "stored dump is corrupt or tampered: manifest says {} bytes sha256 {}, store has {actual}; replay refused",
            self.expected.size, self.expected.sha256
        );
        self.mismatch = Some(message.clone());
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Verifying<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.mismatch.is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "replay refused")));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        this.hasher.update(new);
        this.read += new.len() as u64;
        if this.read > this.expected.size {
            buf.set_filled(before);
            let actual = format!("more than {} bytes", this.expected.size);
            return Poll::Ready(Err(this.refuse(actual)));
        }
        if new.is_empty() {
            let sha256 = hex::encode(this.hasher.clone().finalize());
            if this.read != this.expected.size || sha256 != this.expected.sha256 {
                let actual = format!("{} bytes sha256 {sha256}", this.read);
                return Poll::Ready(Err(this.refuse(actual)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::hooks::fake::FakeExecutor;
    use crate::policy::OnNoPods;

    fn dump(single: bool) -> Dump {
        Dump {
            name: "data".into(),
            pod_selector: Default::default(),
            container: None,
            command: Exec::Shell("cat data.txt".into()),
            restore_command: Some(Exec::Shell("cat > restored.txt".into())),
            run_in_single_pod: single,
            timeout: Duration::from_secs(5),
            while_frozen: true,
            on_no_pods: OnNoPods::Fail,
        }
    }

    fn written(bytes: &[u8]) -> Written {
        Written {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn given_statefulset_dump_then_pod_of_the_same_name_is_chosen_and_a_missing_one_named() {
        let usable = [Target::new("b", "db-0", "db"), Target::new("b", "db-1", "db")];
        assert_eq!(choose(&usable, &dump(false), "b", "db-1").unwrap().pod, "db-1");
        let missing = choose(&usable, &dump(false), "b", "db-2").unwrap_err();
        assert!(missing.contains("no ready pod b/db-2"), "{missing}");
    }

    #[test]
    fn given_run_in_single_pod_dump_then_first_ready_pod_by_name_is_chosen() {
        let usable = [Target::new("b", "web-zz", "c"), Target::new("b", "web-aa", "c")];
        assert_eq!(
            choose(&usable, &dump(true), "b", "web-old").unwrap().pod,
            "web-aa"
        );
        assert!(choose(&[], &dump(true), "b", "web-old").is_err());
    }

    #[tokio::test]
    async fn given_matching_bytes_when_read_then_passed_through_unchanged() {
        let data = b"row 1\nrow 2\n".to_vec();
        let mut r = Verifying::new(&data[..], written(&data));
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!((out, r.read, r.mismatch), (data, 12, None));
    }

    #[tokio::test]
    async fn given_same_size_tampered_bytes_when_read_then_end_is_an_error_not_eof() {
        let mut r = Verifying::new(&b"row 1\nrow X\n"[..], written(b"row 1\nrow 2\n"));
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(r.mismatch.unwrap().contains("corrupt or tampered"));
    }

    #[tokio::test]
    async fn given_longer_bytes_when_read_then_refused_before_the_excess_is_passed_on() {
        let mut r = Verifying::new(&b"row 1\nrow 2\nmore\n"[..], written(b"row 1\n"));
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).await.is_err());
        assert!(out.is_empty(), "{out:?}");
    }

    #[tokio::test]
    async fn given_tampered_input_when_fed_to_fake_executor_then_command_fails_and_input_not_recorded() {
        let fake = FakeExecutor::succeeding(Duration::ZERO);
        let target = Target::new("b", "db-0", "db");
        let argv = vec!["sh".into(), "-c".into(), "cat > restored.txt".into()];
        let mut bad = Verifying::new(&b"row X\n"[..], written(b"row 1\n"));
        let out = fake
            .feed(&target, &argv, &mut bad, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(out.termination, crate::hooks::Termination::Failed(_)));
        assert!(fake.inputs().is_empty());
        let mut good = Verifying::new(&b"row 1\n"[..], written(b"row 1\n"));
        let out = fake
            .feed(&target, &argv, &mut good, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(out.termination.is_success());
        assert_eq!(fake.inputs(), [(target, b"row 1\n".to_vec())]);
    }
}
