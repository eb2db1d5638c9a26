//! Logical dumps: a command's stdout streamed into the object store at `dumps/<dump>/<namespace>/<pod>`,
//! never held whole in memory, with size and sha256 computed on the way.
//!
//! A dump is trusted only when all of these hold (k8up #1109 stored a truncated dump as success):
//! - the command exited 0: the store's reader sees an error instead of end-of-file otherwise, so `put`
//!   commits nothing for a failed, timed-out or broken command;
//! - the bytes the store committed are the bytes the command wrote (size and sha256);
//! - the store reports that size for the key afterwards.
//!
//! Pods are chosen like hook rules' (Running, container ready, explicit or only container), once, before
//! the freeze. RBAC: the same `pods` list and `pods/exec` create as hooks.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::manifest::{DumpRecord, DumpStatus};
use crate::hooks::plan::Skipped;
use crate::hooks::{Budget, PodExecutor, Target, select};
use crate::policy::{Dump, Exec, OnNoPods, Policy};
use crate::store::crypt::{Sealing, Stored, put_artifact};
use crate::store::{BackupKeys, ObjectStore, Written};
use freezeframe_selector::query as selector_query;

/// Dumps streamed at the same time (each may hold an S3 multipart upload's buffers).
pub const CONCURRENCY: usize = 4;

/// Bytes buffered between the exec stream and the store upload.
const PIPE_BYTES: usize = 256 * 1024;

/// Errors of choosing the pods to dump.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Pods or containers could not be selected.
    #[error("dumps `{dump}`")]
    Select {
        /// The dump.
        dump: String,
        /// Why.
        #[source]
        source: select::Error,
    },
    /// A dump with `onNoPods: fail` matched no usable pod.
    #[error(
        "dumps `{dump}`: no usable pod matches `{selector}` in namespaces [{}]{}",
        namespaces.join(", "),
        if excluded.is_empty() { String::new() } else { format!(" (excluded: {})", excluded.join("; ")) }
    )]
    NoPods {
        /// The dump.
        dump: String,
        /// Its selector, in query syntax.
        selector: String,
        /// Where it looked.
        namespaces: Vec<String>,
        /// Matching pods left out, with why.
        excluded: Vec<String>,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One dump on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpTarget {
    /// The dump's name.
    pub name: String,
    /// Where it runs.
    pub target: Target,
    /// The command.
    pub exec: Exec,
    /// For the whole dump.
    pub timeout: Duration,
    /// Inside the freeze, or after the thaw.
    pub while_frozen: bool,
}

impl DumpTarget {
    fn argv(&self) -> Vec<String> {
        match &self.exec {
            Exec::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Exec::Argv(a) => a.clone(),
        }
    }
}

/// Every dump invocation of a policy, and the dumps skipped for an empty selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpPlan {
    /// One per dump and pod, in policy order then namespace/pod.
    pub targets: Vec<DumpTarget>,
    /// Dumps with `onNoPods: skip` that matched no pod.
    pub skipped: Vec<Skipped>,
}

impl DumpPlan {
    /// The dumps taken inside the freeze (`frozen = true`) or after it.
    pub fn phase(&self, frozen: bool) -> impl Iterator<Item = &DumpTarget> {
        self.targets.iter().filter(move |t| t.while_frozen == frozen)
    }
}

/// The targets of one dump over already-listed `pods`; `Ok(Err(_))` = skipped (empty, `onNoPods: skip`).
pub fn dump_targets(
    dump: &Dump,
    pods: &[Pod],
    namespaces: &[String],
) -> Result<std::result::Result<Vec<DumpTarget>, Skipped>> {
    let selection =
        select::select_from(pods, dump.container.as_deref(), false).map_err(|source| Error::Select {
            dump: dump.name.clone(),
            source,
        })?;
    if selection.targets.is_empty() {
        let selector = selector_query(&dump.pod_selector);
        return match dump.on_no_pods {
            OnNoPods::Fail => Err(Error::NoPods {
                dump: dump.name.clone(),
                selector,
                namespaces: namespaces.to_vec(),
                excluded: selection
                    .excluded
                    .iter()
                    .map(|(p, why)| format!("{p}: {why}"))
                    .collect(),
            }),
            OnNoPods::Skip => Ok(Err(Skipped {
                rule: format!("dumps `{}`", dump.name),
                reason: format!(
                    "no usable pod matches `{selector}` in namespaces [{}]",
                    namespaces.join(", ")
                ),
            })),
        };
    }
    let mut targets = selection.targets;
    if dump.run_in_single_pod {
        // Sorted by namespace/name: the first pod is a stable choice.
        targets.truncate(1);
        tracing::info!(dump = %dump.name, pod = %targets[0].pod_ref(), "runInSinglePod: dump from the first pod by namespace/name");
    }
    Ok(Ok(targets
        .into_iter()
        .map(|target| DumpTarget {
            name: dump.name.clone(),
            target,
            exec: dump.command.clone(),
            timeout: dump.timeout,
            while_frozen: dump.while_frozen,
        })
        .collect()))
}

/// Choose the pods of every dump of `policy` (before the freeze: a wrong dump fails before any pod is
/// touched).
pub async fn plan(client: &kube::Client, policy: &Policy) -> Result<DumpPlan> {
    let mut out = DumpPlan::default();
    if policy.dumps.is_empty() {
        return Ok(out);
    }
    let select_err = |dump: &str| {
        let dump = dump.to_owned();
        move |source| Error::Select { dump, source }
    };
    let namespaces = select::namespaces(client, &policy.namespaces)
        .await
        .map_err(select_err("(namespaces)"))?;
    for dump in &policy.dumps {
        let pods = select::list_pods(client, &namespaces, &dump.pod_selector)
            .await
            .map_err(select_err(&dump.name))?;
        match dump_targets(dump, &pods, &namespaces)? {
            Ok(targets) => out.targets.extend(targets),
            Err(skipped) => {
                tracing::info!(rule = %skipped.rule, reason = %skipped.reason, "dump skipped (onNoPods: skip)");
                out.skipped.push(skipped);
            }
        }
    }
    Ok(out)
}

/// Run `targets` (at most [`CONCURRENCY`] at once) into the backup `keys`; one record each, sorted by
/// dump, namespace and pod. Inside a freeze, `budget` is the freeze's: a dump still running (or not yet
/// started) when it runs out is cut off and stores nothing; after the thaw it is an unbounded budget.
pub async fn run_all<'a, E: PodExecutor>(
    executor: &E,
    store: &dyn ObjectStore,
    sealing: &Sealing,
    keys: &BackupKeys,
    targets: impl Iterator<Item = &'a DumpTarget>,
    budget: &Budget,
) -> Vec<DumpRecord> {
    let mut records: Vec<DumpRecord> = futures::stream::iter(targets)
        .map(|t| run_one(executor, store, sealing, keys, t, budget))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    records.sort_by(|a, b| (&a.name, &a.namespace, &a.pod).cmp(&(&b.name, &b.namespace, &b.pod)));
    records
}

/// Stream one dump into the store (encrypted as `sealing` says) and check what was committed. When
/// `budget` cuts it off, its stream is closed and the upload aborted: nothing is stored.
pub async fn run_one<E: PodExecutor>(
    executor: &E,
    store: &dyn ObjectStore,
    sealing: &Sealing,
    keys: &BackupKeys,
    dump: &DumpTarget,
    budget: &Budget,
) -> DumpRecord {
    let t = &dump.target;
    let key = keys.dump(&dump.name, &t.namespace, &t.pod);
    let started = Instant::now();
    let _pending = budget.track(format!("dump `{}` on {}", dump.name, t.pod_ref()));
    tracing::info!(dump = %dump.name, pod = %t.pod_ref(), key, "dump starts");
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let (verdict_tx, verdict_rx) = oneshot::channel();
    let cut_off = || {
        format!(
            "cut off: the freeze exceeded maxFreeze ({}); nothing was stored",
            crate::hooks::budget::seconds(budget.max().unwrap_or_default())
        )
    };
    let produce = async {
        let mut writer = HashingWriter::new(writer);
        // Past the budget the stream is dropped (closed), and the verdict tells the upload to abort.
        let argv = dump.argv();
        let out = if budget.is_cut_off() {
            None
        } else {
            tokio::select! {
                biased;
                _ = budget.cut_off() => None,
                out = executor.stream(t, &argv, &mut writer, dump.timeout) => Some(out),
            }
        };
        let verdict = match &out {
            None => Err(cut_off()),
            Some(Ok(o)) if o.termination.is_success() => Ok(()),
            Some(Ok(o)) => Err(format!("the dump command ended with {}", o.termination)),
            Some(Err(e)) => Err(e.summary()),
        };
        // The verdict goes first: the reader must never see end-of-file before it knows the outcome.
        let _ = verdict_tx.send(verdict);
        let _ = writer.inner.shutdown().await;
        (out, writer.finish())
    };
    let consume = async {
        let mut body = GatedReader {
            inner: reader,
            verdict: Some(verdict_rx),
            failed: None,
        };
        put_artifact(store, &key, &mut body, sealing).await
    };
    let ((out, produced), put) = tokio::join!(produce, consume);

    let mut record = DumpRecord {
        name: dump.name.clone(),
        namespace: t.namespace.clone(),
        pod: t.pod.clone(),
        container: t.container.clone(),
        artifact: key.strip_prefix(keys.root()).unwrap_or(&key).to_string(),
        while_frozen: dump.while_frozen,
        status: DumpStatus::Failed,
        size: None,
        sha256: None,
        exit_code: None,
        error: None,
        stderr_tail: String::new(),
        duration_millis: 0,
    };
    let error = match (&out, &put) {
        (None, _) => Some(cut_off()),
        (Some(Err(e)), _) => Some(e.summary()),
        (Some(Ok(o)), _) if !o.termination.is_success() => Some(format!(
            "the command ended with {} after {} bytes; nothing was stored",
            o.termination, produced.size
        )),
        (Some(Ok(_)), Err(e)) => Some(format!("storing {key}: {}", crate::k8s::errors::chain(e))),
        (Some(Ok(_)), Ok(stored)) => check_committed(store, &key, &produced, stored).await.err(),
    };
    if let Some(Ok(o)) = &out {
        record.stderr_tail = o.stderr.clone();
        record.exit_code = match o.termination {
            crate::hooks::Termination::Exited(c) => Some(c),
            _ => None,
        };
    }
    record.duration_millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match (error, put) {
        (None, Ok(stored)) => {
            record.status = DumpStatus::Succeeded;
            record.size = Some(stored.stored.size);
            record.sha256 = Some(stored.stored.sha256);
            tracing::info!(dump = %dump.name, pod = %t.pod_ref(), bytes = produced.size, "dump stored");
        }
        (error, put) => {
            let e = error.unwrap_or_else(|| match put {
                Err(e) => format!("storing {key}: {}", crate::k8s::errors::chain(&e)),
                Ok(_) => "unknown failure".into(),
            });
            tracing::warn!(dump = %dump.name, pod = %t.pod_ref(), error = %e, stderr = %record.stderr_tail, "dump failed");
            record.error = Some(e);
        }
    }
    record
}

/// The store committed exactly what the command wrote (before encryption, when encrypted), and holds
/// what it reported afterwards; otherwise the object is deleted (best effort) and the dump fails.
async fn check_committed(
    store: &dyn ObjectStore,
    key: &str,
    produced: &Written,
    stored: &Stored,
) -> std::result::Result<(), String> {
    let problem = if &stored.plain != produced {
        Some(format!(
            "the command wrote {} bytes (sha256 {}) but the store committed {} bytes (sha256 {}){}",
            produced.size,
            produced.sha256,
            stored.plain.size,
            stored.plain.sha256,
            if stored.plain == stored.stored {
                ""
            } else {
                " before encryption"
            }
        ))
    } else {
        match store.head(key).await {
            Ok(Some(size)) if size == stored.stored.size => None,
            Ok(Some(size)) => Some(format!(
                "size mismatch: the store committed {} bytes, it holds {size}",
                stored.stored.size
            )),
            Ok(None) => Some(format!("{key} is missing after upload")),
            Err(e) => Some(format!("checking {key}: {}", crate::k8s::errors::chain(&e))),
        }
    };
    match problem {
        None => Ok(()),
        Some(p) => {
            if let Err(e) = store.delete(&[key.to_string()]).await {
                tracing::warn!(key, error = %crate::k8s::errors::chain(&e), "could not delete an untrusted dump");
            }
            Err(p)
        }
    }
}

/// Counts and hashes every byte accepted by the inner writer.
struct HashingWriter {
    inner: DuplexStream,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(inner: DuplexStream) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> Written {
        Written {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A reader whose end-of-file waits for the producer's verdict: a failed command turns end-of-file into
/// an error, so the store's `put` commits nothing.
struct GatedReader {
    inner: DuplexStream,
    verdict: Option<oneshot::Receiver<std::result::Result<(), String>>>,
    /// Once failed, every later read fails the same way.
    failed: Option<String>,
}

impl AsyncRead for GatedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(why) = &self.failed {
            return Poll::Ready(Err(io::Error::other(why.clone())));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            return Poll::Ready(Ok(()));
        }
        let Some(verdict) = self.verdict.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(verdict).poll(cx));
        self.verdict = None;
        let why = match result {
            Ok(Ok(())) => return Poll::Ready(Ok(())),
            Ok(Err(why)) => why,
            Err(_) => "the dump command was abandoned".to_string(),
        };
        self.failed = Some(why.clone());
        Poll::Ready(Err(io::Error::other(why)))
    }
}

#[cfg(test)]
mod tests;
