//! Stage two: raw sections → validated model, collecting every problem with its position.
//!
//! Each storage, webhook, Stork rule and policy is decoded from its own subtree, so a problem in one
//! never hides the others; a policy that references an invalid storage/webhook/rule is itself invalid.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::model::*;
use super::raw::*;
use super::schedule::Schedule;
use super::values::{self, Invalid};
use super::yaml::{self, Node, NodeKind, Path, YamlError};
use super::{PolicySet, Problem};

/// API version of a PolicySet.
pub const API_VERSION: &str = "freezeframe.dev/v1alpha1";
/// API version of a Stork Rule.
pub const STORK_API_VERSION: &str = "stork.libopenstorage.org/v1alpha1";

struct Ctx<'a> {
    source: &'a str,
    root: &'a Node,
    policy: Option<String>,
    problems: Vec<Problem>,
    /// Valid, but known to hang or fail at run time.
    warnings: Vec<Problem>,
}

impl<'a> Ctx<'a> {
    fn new(source: &'a str, root: &'a Node, policy: Option<String>) -> Self {
        Ctx {
            source,
            root,
            policy,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }
    /// A combination that is valid but known to hang or fail; `validate` prints it, nothing refuses it.
    fn warn(&mut self, path: &Path, message: impl Into<String>) {
        self.warnings.push(Problem {
            source: self.source.to_string(),
            policy: self.policy.clone(),
            path: path.to_string(),
            location: Some(self.root.locate(path)),
            message: message.into(),
        });
    }
    fn push(&mut self, path: &Path, key: bool, message: String) {
        let location = if key {
            self.root.locate_key(path)
        } else {
            self.root.locate(path)
        };
        self.problems.push(Problem {
            source: self.source.to_string(),
            policy: self.policy.clone(),
            path: path.to_string(),
            location: Some(location),
            message,
        });
    }
    fn invalid(&mut self, path: &Path, inv: Invalid) {
        self.push(path, false, inv.to_string());
    }
    fn msg(&mut self, path: &Path, message: impl Into<String>) {
        self.push(path, false, message.into());
    }
    fn yaml(&mut self, base: &Path, err: YamlError) {
        match err {
            YamlError::Shape {
                path,
                location,
                message,
            } => self.problems.push(Problem {
                source: self.source.to_string(),
                policy: self.policy.clone(),
                path: base.join(&path).to_string(),
                location,
                message,
            }),
            YamlError::Syntax { location, message } => self.problems.push(Problem {
                source: self.source.to_string(),
                policy: self.policy.clone(),
                path: base.to_string(),
                location: Some(location),
                message,
            }),
        }
    }
    /// Decode the node at `path`. Unknown fields are reported and dropped, then decoding is retried, so
    /// several typos in one policy are all reported at once; any other shape error stops the section.
    fn decode<T: serde::de::DeserializeOwned>(&mut self, path: &Path) -> Option<T> {
        let mut node = self.root.get(path)?.clone();
        for _ in 0..32 {
            match yaml::decode(&node) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let unknown = match &e {
                        YamlError::Shape {
                            path: rel, message, ..
                        } if message.starts_with("unknown field") => Some(rel.clone()),
                        _ => None,
                    };
                    self.yaml(path, e);
                    match unknown {
                        Some(rel) if node.remove(&rel) => {}
                        _ => return None,
                    }
                }
            }
        }
        None
    }

    fn duration(
        &mut self,
        path: &Path,
        text: Option<&str>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        match text.map(values::parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.invalid(path, e);
                default
            }
        }
    }
    fn label(&mut self, path: &Path, name: &str) {
        if let Err(e) = values::check_dns_label(name) {
            self.invalid(path, e);
        }
    }
    fn unknown_keys(&mut self, path: &Path, allowed: &[&str]) {
        let Some(NodeKind::Map(entries)) = self.root.get(path).map(|n| &n.kind) else {
            return;
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let hint = yaml::did_you_mean(&e.key, allowed).map(|s| format!(" (did you mean `{s}`?)"));
                let list = allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.push(
                    &path.key(&e.key),
                    true,
                    format!(
                        "unknown field `{}`{}; allowed: {list}",
                        e.key,
                        hint.unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// A document and the name of where it came from (a ConfigMap key or a file).
pub struct Doc<'a> {
    /// `policies.yaml`, a rule key, or a path (with the key), as shown in problems.
    pub source: String,
    /// The ConfigMap key (or file name): names a Stork rule that has no `metadata.name`.
    pub key: String,
    /// The parsed document.
    pub node: &'a Node,
}

/// Warn about dumps that are valid but known to hang or fail (see docs/policy.md, "Database recipes").
fn dump_warnings(ctx: &mut Ctx<'_>, dp: &Path, dump: &Dump) {
    let text = |e: &Exec| match e {
        Exec::Shell(s) => s.clone(),
        Exec::Argv(v) => v.join(" "),
    };
    let command = text(&dump.command);
    let words: Vec<&str> = command.split_whitespace().collect();
    let is_mysqldump = words
        .iter()
        .any(|w| matches!(w.rsplit('/').next(), Some("mysqldump" | "mariadb-dump")));
    if dump.while_frozen
        && is_mysqldump
        && !(words.contains(&"--single-transaction") && words.contains(&"--skip-lock-tables"))
    {
        ctx.warn(
            &dp.key("command"),
            "warning: mysqldump while frozen without `--single-transaction --skip-lock-tables` waits for \
table locks behind the writers the freeze blocks, so the freeze lasts until lock_wait_timeout (a day \
by default); add both flags, or set `whileFrozen: false`",
        );
    }
    if let Some(restore) = &dump.restore_command {
        if !dump.run_in_single_pod {
            ctx.warn(
                &dp.key("restoreCommand"),
                "warning: without `runInSinglePod: true` the dump of each pod is replayed into the pod \
of the same name, which only a StatefulSet's pods keep; a Deployment's restored pods have new names \
and the replay finds no pod: set `runInSinglePod: true` unless the pods belong to a StatefulSet",
            );
        }
        if command.contains("pg_dumpall") && text(restore).contains("ON_ERROR_STOP") {
            ctx.warn(
                &dp.key("restoreCommand"),
                "warning: pg_dumpall output replays with harmless errors (`role \"postgres\" already \
exists`), so with ON_ERROR_STOP the replay stops at the first line; replay it with plain `psql`",
            );
        }
    }
}

/// Validate a PolicySet document plus any Stork Rule documents.
pub fn validate(policy_set: Option<Doc<'_>>, rules: &[Doc<'_>]) -> PolicySet {
    let mut set = PolicySet::default();
    let stork = stork_rules(rules, &mut set.problems);
    let Some(doc) = policy_set else {
        set.problems.push(Problem::general(
            "(none)",
            "no PolicySet found: expected a document with \
`apiVersion: freezeframe.dev/v1alpha1` and `kind: PolicySet` (in a ConfigMap, under the key `policies.yaml`)",
        ));
        return set;
    };
    let root = doc.node;
    let mut ctx = Ctx::new(&doc.source, root, None);
    let top = Path::default();
    if !matches!(root.kind, NodeKind::Map(_)) {
        ctx.msg(
            &top,
            format!(
                "found {}; allowed: a mapping with apiVersion, kind, policies, ...",
                root.describe()
            ),
        );
        set.problems = ctx.problems;
        return set;
    }
    ctx.unknown_keys(&top, POLICY_SET_FIELDS);
    for (field, want) in [("apiVersion", API_VERSION), ("kind", "PolicySet")] {
        match root.field(field).and_then(Node::as_str) {
            Some(v) if v == want => {}
            other => ctx.msg(
                &top.key(field),
                format!(
                    "found {}; allowed: `{want}`",
                    other.map(|v| format!("{v:?}")).unwrap_or("nothing".into())
                ),
            ),
        }
    }

    // Storages.
    let mut storages = BTreeMap::new();
    let mut bad_storages = BTreeSet::new();
    if let Some(node) = root.field("storages") {
        match &node.kind {
            NodeKind::Map(entries) => {
                for e in entries {
                    let path = top.key("storages").key(&e.key);
                    let before = ctx.problems.len();
                    ctx.label(&path, &e.key);
                    let storage = ctx
                        .decode::<RawStorage>(&path)
                        .and_then(|raw| storage(&mut ctx, &path, &e.key, raw));
                    match storage {
                        Some(s) if ctx.problems.len() == before => {
                            storages.insert(e.key.clone(), s);
                        }
                        _ => {
                            bad_storages.insert(e.key.clone());
                        }
                    }
                }
            }
            _ => ctx.msg(
                &top.key("storages"),
                format!("found {}; allowed: a mapping of name to storage", node.describe()),
            ),
        }
    }

    // Webhooks.
    let mut webhooks: Vec<Webhook> = Vec::new();
    let mut bad_webhooks = BTreeSet::new();
    for (i, path) in seq_paths(&mut ctx, &top.key("webhooks")) {
        let before = ctx.problems.len();
        let hook = ctx
            .decode::<RawWebhook>(&path)
            .map(|raw| webhook(&mut ctx, &path, raw));
        match hook {
            Some(h) if webhooks.iter().any(|w| w.name == h.name) => {
                ctx.msg(
                    &path.key("name"),
                    format!("found {:?} again; allowed: unique webhook names", h.name),
                );
                bad_webhooks.insert(h.name);
            }
            Some(h) if ctx.problems.len() == before => webhooks.push(h),
            Some(h) => {
                bad_webhooks.insert(h.name);
            }
            None => {
                if let Some(n) = root.get(&path.key("name")).and_then(Node::as_str) {
                    bad_webhooks.insert(n.to_string());
                }
                let _ = i;
            }
        }
    }

    // Defaults.
    let dpath = top.key("defaults");
    let defaults: RawDefaults = if root.field("defaults").is_some() {
        ctx.decode(&dpath).unwrap_or_default()
    } else {
        RawDefaults::default()
    };
    if let Some(tz) = &defaults.timezone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        ctx.msg(
            &dpath.key("timezone"),
            format!("found {tz:?}; allowed: an IANA time zone such as UTC or Europe/Berlin"),
        );
    }
    let default_deadline = ctx.duration(
        &dpath.key("startingDeadline"),
        defaults.starting_deadline.as_deref(),
        DEFAULT_STARTING_DEADLINE,
    );
    if let Some(s) = &defaults.storage {
        check_ref(
            &mut ctx,
            &dpath.key("storage"),
            "storage",
            s,
            storages.keys(),
            &bad_storages,
        );
    }
    let default_retention = defaults
        .retention
        .as_ref()
        .and_then(|r| retention(&mut ctx, &dpath.key("retention"), r));
    set.problems.append(&mut ctx.problems);

    // Policies.
    let env = Env {
        storages: &storages,
        bad_storages: &bad_storages,
        webhooks: &webhooks,
        bad_webhooks: &bad_webhooks,
        stork: &stork,
        defaults: &defaults,
        default_deadline,
        default_retention: default_retention.as_ref(),
    };
    let ppath = top.key("policies");
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (_, path) in seq_paths(&mut ctx, &ppath) {
        let name = root
            .get(&path.key("name"))
            .and_then(Node::as_str)
            .map(str::to_string);
        let mut pctx = Ctx::new(&doc.source, root, name.clone());
        let policy = pctx
            .decode::<RawPolicy>(&path)
            .and_then(|raw| policy(&mut pctx, &path, &env, raw));
        if let Some(n) = &name {
            *names.entry(n.clone()).or_default() += 1;
        }
        let valid = pctx.problems.is_empty();
        set.problems.append(&mut pctx.problems);
        set.warnings.append(&mut pctx.warnings);
        candidates.push((name, path, policy.filter(|_| valid)));
    }
    if root.field("policies").is_none() {
        ctx.msg(&ppath, "missing required field `policies` (a list of policies)");
    }
    set.problems.append(&mut ctx.problems);
    for (name, path, policy) in candidates {
        if let Some(n) = &name
            && names[n] > 1
        {
            let mut c = Ctx::new(&doc.source, root, name.clone());
            c.msg(
                &path.key("name"),
                format!(
                    "found {n:?} in {} policies; allowed: unique policy names",
                    names[n]
                ),
            );
            set.problems.append(&mut c.problems);
            set.invalid_policies.push(n.clone());
            continue;
        }
        match policy {
            Some(p) => set.policies.push(p),
            None => set
                .invalid_policies
                .push(name.unwrap_or_else(|| format!("{path}"))),
        }
    }
    set.invalid_policies.dedup();
    set.storages = storages;
    set.webhooks = webhooks;
    set.stork_rules = stork;
    set
}

fn seq_paths(ctx: &mut Ctx<'_>, path: &Path) -> Vec<(usize, Path)> {
    match ctx.root.get(path).map(|n| &n.kind) {
        None => Vec::new(),
        Some(NodeKind::Seq(items)) => (0..items.len()).map(|i| (i, path.index(i))).collect(),
        Some(_) => {
            let found = ctx.root.get(path).map(Node::describe).unwrap_or_default();
            ctx.msg(path, format!("found {found}; allowed: a list"));
            Vec::new()
        }
    }
}

fn check_ref<'k>(
    ctx: &mut Ctx<'_>,
    path: &Path,
    what: &str,
    name: &str,
    valid: impl Iterator<Item = &'k String> + Clone,
    invalid: &BTreeSet<String>,
) -> bool {
    if valid.clone().any(|k| k == name) {
        return true;
    }
    if invalid.contains(name) {
        ctx.msg(
            path,
            format!("{what} `{name}` is invalid (see its own problems); fix it to use this policy"),
        );
        return false;
    }
    let all: Vec<String> = valid.cloned().chain(invalid.iter().cloned()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let hint = yaml::did_you_mean(name, &all)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    let allowed = if all.is_empty() {
        format!("none defined: add it under `{what}s`")
    } else {
        all.iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ctx.msg(
        path,
        format!("found {what} {name:?}, which does not exist{hint}; allowed: {allowed}"),
    );
    false
}

fn storage(ctx: &mut Ctx<'_>, path: &Path, name: &str, raw: RawStorage) -> Option<Storage> {
    let encryption = raw
        .encryption
        .map(|e| encryption(ctx, &path.key("encryption"), e));
    let backend = match (raw.s3, raw.filesystem) {
        (Some(s3), None) => {
            let p = path.key("s3");
            if s3.bucket.is_empty() || s3.bucket.contains('/') {
                ctx.msg(
                    &p.key("bucket"),
                    format!("found {:?}; allowed: a bucket name", s3.bucket),
                );
            }
            let prefix = s3.prefix.unwrap_or_default().trim_matches('/').to_string();
            if prefix.split('/').any(|s| s == ".." || s == ".") {
                ctx.msg(
                    &p.key("prefix"),
                    format!("found {prefix:?}; allowed: a key prefix without `.` or `..` segments"),
                );
            }
            if let Some(e) = &s3.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                ctx.msg(
                    &p.key("endpoint"),
                    format!("found {e:?}; allowed: an http:// or https:// URL"),
                );
            }
            if let Some(s) = &s3.credentials_secret
                && let Err(e) = values::check_dns_subdomain(s)
            {
                ctx.invalid(&p.key("credentialsSecret"), e);
            }
            if let Some(sse) = &s3.server_side_encryption
                && sse != "AES256"
                && sse != "aws:kms"
            {
                ctx.msg(
                    &p.key("serverSideEncryption"),
                    format!("found {sse:?}; allowed: `AES256`, `aws:kms`"),
                );
            }
            Backend::S3(S3Storage {
                bucket: s3.bucket,
                prefix,
                region: s3.region,
                endpoint: s3.endpoint,
                force_path_style: s3.force_path_style.unwrap_or(false),
                credentials_secret: s3.credentials_secret,
                server_side_encryption: s3.server_side_encryption,
                kms_key_id: s3.kms_key_id,
                object_lock: s3
                    .object_lock
                    .and_then(|l| object_lock(ctx, &p.key("objectLock"), l)),
            })
        }
        (None, Some(fs)) => {
            if !fs.path.starts_with('/') {
                ctx.msg(
                    &path.key("filesystem").key("path"),
                    format!("found {:?}; allowed: an absolute path", fs.path),
                );
            }
            Backend::Filesystem { path: fs.path }
        }
        _ => {
            ctx.msg(
                path,
                "found no backend or two; allowed: exactly one of `s3`, `filesystem`",
            );
            return None;
        }
    };
    let repository = raw
        .repository
        .and_then(|r| repository(ctx, &path.key("repository"), r));
    Some(Storage {
        name: name.to_string(),
        backend,
        repository,
        encryption,
    })
}

fn encryption(ctx: &mut Ctx<'_>, path: &Path, raw: RawEncryption) -> Encryption {
    if raw.recipients.is_empty() {
        ctx.msg(
            &path.key("recipients"),
            "found no recipient; allowed: one or more age X25519 public keys (age1…, from `age-keygen -y`)",
        );
    }
    for (i, r) in raw.recipients.iter().enumerate() {
        if let Err(e) = r.trim().parse::<age::x25519::Recipient>() {
            ctx.msg(
                &path.key("recipients").index(i),
                format!("found {r:?}, not an age X25519 recipient ({e}); allowed: an age1… public key"),
            );
        }
    }
    if let Some(r) = &raw.identity_secret
        && let Err(e) = values::check_dns_subdomain(&r.name)
    {
        ctx.invalid(&path.key("identitySecret").key("name"), e);
    }
    Encryption {
        recipients: raw.recipients.iter().map(|r| r.trim().to_string()).collect(),
        identity_secret: raw.identity_secret.map(|r| SecretKeyRef {
            name: r.name,
            key: r.key,
        }),
    }
}

fn object_lock(ctx: &mut Ctx<'_>, path: &Path, raw: RawObjectLock) -> Option<ObjectLock> {
    let mode = match raw.mode.as_str() {
        "GOVERNANCE" => Some(LockMode::Governance),
        "COMPLIANCE" => Some(LockMode::Compliance),
        other => {
            ctx.msg(
                &path.key("mode"),
                format!("found {other:?}; allowed: `GOVERNANCE`, `COMPLIANCE`"),
            );
            None
        }
    };
    let days = match u32::try_from(raw.retain_days) {
        Ok(d) if d >= 1 => Some(d),
        _ => {
            ctx.msg(
                &path.key("retainDays"),
                format!(
                    "found {}; allowed: a whole number of days, at least 1",
                    raw.retain_days
                ),
            );
            None
        }
    };
    Some(ObjectLock {
        mode: mode?,
        retain_days: days?,
    })
}

/// `storages.<name>.repository`: the password Secret is required (the repository is encrypted with it).
fn repository(ctx: &mut Ctx<'_>, path: &Path, raw: RawRepository) -> Option<Repository> {
    let prune_every = ctx.duration(
        &path.key("pruneEvery"),
        raw.prune_every.as_deref(),
        DEFAULT_PRUNE_EVERY,
    );
    if prune_every.is_zero() {
        ctx.msg(
            &path.key("pruneEvery"),
            "found a zero duration; allowed: a positive duration such as 7d or 24h",
        );
    }
    let Some(secret) = raw.password_secret else {
        ctx.msg(
            path,
            "found no `passwordSecret`; allowed: `passwordSecret: {name: <Secret in freezeframe's namespace>, key: <key holding the password>}`",
        );
        return None;
    };
    let sp = path.key("passwordSecret");
    if let Err(e) = values::check_dns_subdomain(&secret.name) {
        ctx.invalid(&sp.key("name"), e);
    }
    if secret.key.is_empty() {
        ctx.msg(
            &sp.key("key"),
            "found an empty key; allowed: the Secret's key holding the password",
        );
    }
    Some(Repository {
        password_secret: SecretKeyRef {
            name: secret.name,
            key: secret.key,
        },
        prune_every,
    })
}

/// `volumes.mover`: how the mover Jobs of `moveData` run.
fn mover(ctx: &mut Ctx<'_>, path: &Path, raw: RawMover) -> Mover {
    let concurrency = match raw.concurrency {
        None => DEFAULT_MOVER_CONCURRENCY,
        Some(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                ctx.msg(
                    &path.key("concurrency"),
                    format!("found {n}; allowed: a whole number of mover Jobs at once, at least 1"),
                );
                DEFAULT_MOVER_CONCURRENCY
            }
        },
    };
    let timeout = ctx.duration(
        &path.key("timeout"),
        raw.timeout.as_deref(),
        DEFAULT_MOVER_TIMEOUT,
    );
    if timeout < std::time::Duration::from_secs(1) {
        ctx.msg(
            &path.key("timeout"),
            "found less than one second; allowed: a duration of at least 1s (a Job's activeDeadlineSeconds)",
        );
    }
    let mut resources = MoverResources::default();
    if let Some(r) = raw.resources {
        let rp = path.key("resources");
        for (field, given, out) in [
            ("requests", r.requests, &mut resources.requests),
            ("limits", r.limits, &mut resources.limits),
        ] {
            for (name, QuantityText(q)) in given.unwrap_or_default() {
                if let Err(e) = values::check_quantity(&q) {
                    ctx.invalid(&rp.key(field).key(&name), e);
                }
                out.insert(name, q);
            }
        }
    }
    let node_selector = raw.node_selector.unwrap_or_default();
    for (k, v) in &node_selector {
        let kp = path.key("nodeSelector").key(k);
        if let Err(e) = values::check_label_key(k) {
            ctx.invalid(&kp, e);
        }
        if let Err(e) = values::check_label_value(v) {
            ctx.invalid(&kp, e);
        }
    }
    let tolerations = raw
        .tolerations
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| toleration(ctx, &path.key("tolerations").index(i), t))
        .collect();
    Mover {
        concurrency,
        resources,
        node_selector,
        tolerations,
        timeout,
    }
}

fn toleration(ctx: &mut Ctx<'_>, path: &Path, raw: RawToleration) -> Toleration {
    match raw.operator.as_deref() {
        None | Some("Equal") => {
            if raw.key.is_none() {
                ctx.msg(
                    &path.key("key"),
                    "found no key with operator `Equal`; allowed: a taint key, or `operator: Exists` to tolerate every taint",
                );
            }
        }
        Some("Exists") => {
            if raw.value.as_deref().is_some_and(|v| !v.is_empty()) {
                ctx.msg(
                    &path.key("value"),
                    "found a value with operator `Exists`; allowed: no value (Exists matches any value)",
                );
            }
        }
        Some(other) => ctx.msg(
            &path.key("operator"),
            format!("found {other:?}; allowed: `Equal`, `Exists`"),
        ),
    }
    if let Some(e) = raw.effect.as_deref()
        && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e)
    {
        ctx.msg(
            &path.key("effect"),
            format!("found {e:?}; allowed: `NoSchedule`, `PreferNoSchedule`, `NoExecute` (or omit for all)"),
        );
    }
    if let Some(k) = raw.key.as_deref()
        && let Err(e) = values::check_label_key(k)
    {
        ctx.invalid(&path.key("key"), e);
    }
    Toleration {
        key: raw.key,
        operator: raw.operator,
        value: raw.value,
        effect: raw.effect,
        toleration_seconds: raw.toleration_seconds,
    }
}

fn webhook(ctx: &mut Ctx<'_>, path: &Path, raw: RawWebhook) -> Webhook {
    if raw.name.is_empty() {
        ctx.msg(
            &path.key("name"),
            "found an empty name; allowed: a non-empty name",
        );
    }
    if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
        ctx.msg(
            &path.key("url"),
            format!("found {:?}; allowed: an http:// or https:// URL", raw.url),
        );
    }
    let events = raw
        .events
        .unwrap_or_else(|| WEBHOOK_EVENTS.iter().map(|s| s.to_string()).collect());
    for (i, ev) in events.iter().enumerate() {
        if !WEBHOOK_EVENTS.contains(&ev.as_str()) {
            let hint = yaml::did_you_mean(ev, WEBHOOK_EVENTS).map(|s| format!(" (did you mean `{s}`?)"));
            ctx.msg(
                &path.key("events").index(i),
                format!(
                    "found {ev:?}{}; allowed: {}",
                    hint.unwrap_or_default(),
                    WEBHOOK_EVENTS.join(", ")
                ),
            );
        }
    }
    if let Some(r) = &raw.secret_ref
        && let Err(e) = values::check_dns_subdomain(&r.name)
    {
        ctx.invalid(&path.key("secretRef").key("name"), e);
    }
    let timeout = ctx.duration(
        &path.key("timeout"),
        raw.timeout.as_deref(),
        DEFAULT_WEBHOOK_TIMEOUT,
    );
    Webhook {
        name: raw.name,
        url: raw.url,
        events,
        secret_ref: raw.secret_ref.map(|r| SecretKeyRef {
            name: r.name,
            key: r.key,
        }),
        timeout,
    }
}

fn retention(ctx: &mut Ctx<'_>, path: &Path, raw: &RawRetention) -> Option<Retention> {
    let before = ctx.problems.len();
    let mut count = |field: &str, v: Option<i64>| -> Option<u32> {
        let v = v?;
        match u32::try_from(v) {
            Ok(n) => Some(n),
            Err(_) => {
                ctx.msg(
                    &path.key(field),
                    format!("found {v}; allowed: a count from 0 to {}", u32::MAX),
                );
                None
            }
        }
    };
    let r = Retention {
        keep_last: count("keepLast", raw.keep_last),
        keep_hourly: count("keepHourly", raw.keep_hourly),
        keep_daily: count("keepDaily", raw.keep_daily),
        keep_weekly: count("keepWeekly", raw.keep_weekly),
        keep_monthly: count("keepMonthly", raw.keep_monthly),
        keep_yearly: count("keepYearly", raw.keep_yearly),
        keep_within: raw
            .keep_within
            .as_deref()
            .map(|t| ctx.duration(&path.key("keepWithin"), Some(t), Default::default())),
    };
    if ctx.problems.len() > before {
        return None;
    }
    let keeps = [
        r.keep_last,
        r.keep_hourly,
        r.keep_daily,
        r.keep_weekly,
        r.keep_monthly,
        r.keep_yearly,
    ]
    .iter()
    .any(|c| c.is_some_and(|n| n > 0))
        || r.keep_within.is_some_and(|d| !d.is_zero());
    if !keeps {
        ctx.msg(
            path,
            "found no rule that keeps a backup; allowed: at least one of keepLast, keepHourly, keepDaily, \
keepWeekly, keepMonthly, keepYearly above 0, or keepWithin above 0s",
        );
        return None;
    }
    Some(r)
}

fn selector(ctx: &mut Ctx<'_>, path: &Path, raw: &RawLabelSelector) -> LabelSelector {
    let sel = LabelSelector {
        match_labels: raw.match_labels.clone(),
        match_expressions: raw.match_expressions.as_ref().map(|v| {
            v.iter()
                .map(|r| LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    values: r.values.clone(),
                })
                .collect()
        }),
    };
    report_selector(ctx, path, &sel);
    sel
}

fn report_selector(ctx: &mut Ctx<'_>, path: &Path, sel: &LabelSelector) {
    for (segs, inv) in values::check_selector(sel) {
        let mut p = path.clone();
        for s in segs {
            match s
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                Some(i) => p = p.index(i),
                None => p = p.key(&s),
            }
        }
        ctx.invalid(&p, inv);
    }
}

/// A `podSelector`: Stork's plain label map (`{app: cassandra}`) or a full LabelSelector.
fn pod_selector(ctx: &mut Ctx<'_>, path: &Path, raw: &BTreeMap<String, serde_json::Value>) -> LabelSelector {
    let is_full = !raw.is_empty() && raw.keys().all(|k| k == "matchLabels" || k == "matchExpressions");
    if is_full {
        match ctx.decode::<RawLabelSelector>(path) {
            Some(r) => return selector(ctx, path, &r),
            None => return LabelSelector::default(),
        }
    }
    if raw.is_empty() {
        ctx.msg(path, "found an empty selector; allowed: labels such as {app: cassandra} or matchLabels/matchExpressions");
    }
    let mut labels = BTreeMap::new();
    for (k, v) in raw {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                let found = if other.is_null() {
                    "nothing".to_string()
                } else {
                    format!("{other}")
                };
                ctx.msg(
                    &path.key(k),
                    format!("found {found}; allowed: a label value (string)"),
                );
                continue;
            }
        };
        labels.insert(k.clone(), text);
    }
    let sel = values::selector_from_labels(labels);
    report_selector(ctx, path, &sel);
    sel
}

fn exec(ctx: &mut Ctx<'_>, path: &Path, value: Option<String>, command: Option<Vec<String>>) -> Option<Exec> {
    match (value, command) {
        (Some(v), None) if !v.trim().is_empty() => Some(Exec::Shell(v)),
        (None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => Some(Exec::Argv(argv)),
        (Some(_), Some(_)) => {
            ctx.msg(path, "found both `value` and `command`; allowed: one of them (`value` runs via sh -c, `command` is an argv list)");
            None
        }
        _ => {
            ctx.msg(
                path,
                "found no command; allowed: `value` (a shell string) or `command` (a non-empty argv list)",
            );
            None
        }
    }
}

fn container(ctx: &mut Ctx<'_>, path: &Path, c: &Option<String>) {
    if let Some(c) = c {
        ctx.label(path, c);
    }
}

fn rule_items(
    ctx: &mut Ctx<'_>,
    path: &Path,
    items: &[RawRuleItem],
    pre: bool,
    origin: impl Fn(usize) -> RuleOrigin,
) -> Vec<HookRule> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = path.index(i);
        let pod_selector = pod_selector(ctx, &p.key("podSelector"), &item.pod_selector);
        container(ctx, &p.key("container"), &item.container);
        if item.actions.is_empty() {
            ctx.msg(
                &p.key("actions"),
                "found no actions; allowed: a list of at least one action",
            );
        }
        let mut actions = Vec::new();
        for (j, a) in item.actions.iter().enumerate() {
            let ap = p.key("actions").index(j);
            let timeout = ctx.duration(&ap.key("timeout"), a.timeout.as_deref(), DEFAULT_ACTION_TIMEOUT);
            let background = a.background.unwrap_or(false);
            let Some(exec) = exec(ctx, &ap, a.value.clone(), a.command.clone()) else {
                continue;
            };
            if background {
                if !pre {
                    ctx.msg(&ap.key("background"), "found `background: true` in a post rule; allowed: only in pre rules (a held lock is released at thaw)");
                }
                match &exec {
                    Exec::Shell(v) if v.contains(WAIT_CMD) => {}
                    _ => ctx.msg(
                        &ap,
                        format!("found `background: true` without {WAIT_CMD}; allowed: a `value` shell command containing {WAIT_CMD}, where freezeframe holds the session open"),
                    ),
                }
            }
            actions.push(Action {
                exec,
                timeout,
                on_error: a.on_error.unwrap_or(OnError::Abort),
                run_in_single_pod: a.run_in_single_pod.unwrap_or(false),
                background,
            });
        }
        out.push(HookRule {
            origin: origin(i),
            pod_selector,
            container: item.container.clone(),
            on_no_pods: item.on_no_pods.unwrap_or(OnNoPods::Fail),
            include_not_ready: item.include_not_ready.unwrap_or(false),
            actions,
        });
    }
    out
}

fn stork_rules(docs: &[Doc<'_>], problems: &mut Vec<Problem>) -> StorkRules {
    let mut out = StorkRules::new();
    for doc in docs {
        let key_name = doc
            .key
            .trim_end_matches(".yaml")
            .trim_end_matches(".yml")
            .to_string();
        let mut ctx = Ctx::new(&doc.source, doc.node, None);
        let top = Path::default();
        let Some(raw) = ctx.decode::<RawStorkRule>(&top) else {
            problems.append(&mut ctx.problems);
            continue;
        };
        if raw.api_version != STORK_API_VERSION || raw.kind != "Rule" {
            ctx.msg(
                &top.key("apiVersion"),
                format!(
                    "found {}/{}; allowed: `{STORK_API_VERSION}` Rule",
                    raw.api_version, raw.kind
                ),
            );
        }
        let name = raw.metadata.and_then(|m| m.name).unwrap_or(key_name);
        let items = rule_items(&mut ctx, &top.key("rules"), &raw.rules, true, |index| {
            RuleOrigin::StorkRule {
                name: name.clone(),
                index,
            }
        });
        if ctx.problems.is_empty() {
            out.insert(name, items);
        } else {
            problems.append(&mut ctx.problems);
        }
    }
    out
}

struct Env<'a> {
    storages: &'a BTreeMap<String, Storage>,
    bad_storages: &'a BTreeSet<String>,
    webhooks: &'a [Webhook],
    bad_webhooks: &'a BTreeSet<String>,
    stork: &'a StorkRules,
    defaults: &'a RawDefaults,
    default_deadline: std::time::Duration,
    default_retention: Option<&'a Retention>,
}

fn policy(ctx: &mut Ctx<'_>, path: &Path, env: &Env<'_>, raw: RawPolicy) -> Option<Policy> {
    ctx.label(&path.key("name"), &raw.name);
    let tz = raw.timezone.as_deref().or(env.defaults.timezone.as_deref());
    let schedule = match Schedule::parse(&raw.schedule, tz) {
        Ok(s) => Some(s),
        Err(e) => {
            ctx.msg(&path.key("schedule"), e.to_string());
            None
        }
    };
    let starting_deadline = ctx.duration(
        &path.key("startingDeadline"),
        raw.starting_deadline.as_deref(),
        env.default_deadline,
    );
    let namespaces = match (&raw.namespaces, &raw.namespace_selector) {
        (Some(names), None) if !names.is_empty() => {
            for (i, n) in names.iter().enumerate() {
                ctx.label(&path.key("namespaces").index(i), n);
            }
            Some(Namespaces::Names(names.clone()))
        }
        (None, Some(sel)) => Some(Namespaces::Selector(selector(
            ctx,
            &path.key("namespaceSelector"),
            sel,
        ))),
        (Some(_), Some(_)) => {
            ctx.msg(
                &path.key("namespaceSelector"),
                "found both `namespaces` and `namespaceSelector`; allowed: one of them",
            );
            None
        }
        _ => {
            ctx.msg(
                &path.key("namespaces"),
                "found no namespaces; allowed: `namespaces: [name, ...]` (non-empty) or `namespaceSelector`",
            );
            None
        }
    };
    let sel = raw
        .selector
        .as_ref()
        .map(|s| selector(ctx, &path.key("selector"), s));
    let resources = {
        let r = raw.resources.clone().unwrap_or(RawResources {
            include: None,
            exclude: None,
        });
        let include = r.include.unwrap_or_else(|| vec!["*".into()]);
        let exclude = r
            .exclude
            .unwrap_or_else(|| DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect());
        for (field, list) in [("include", &include), ("exclude", &exclude)] {
            for (i, item) in list.iter().enumerate() {
                let ok = item == "*"
                    || (!item.is_empty()
                        && item
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
                if !ok {
                    ctx.msg(
                        &path.key("resources").key(field).index(i),
                        format!("found {item:?}; allowed: `*`, a plural (deployments), plural.group (volumesnapshots.snapshot.storage.k8s.io) or a Kind (Deployment)"),
                    );
                }
            }
        }
        Resources { include, exclude }
    };
    let volumes = {
        let v = raw.volumes.clone().unwrap_or(RawVolumes {
            snapshot: None,
            group: None,
            volume_snapshot_class: None,
            volume_group_snapshot_class: None,
            on_error: None,
            ready_timeout: None,
            keep_failed: None,
            move_data: None,
            mover: None,
        });
        let vp = path.key("volumes");
        for (field, class) in [
            ("volumeSnapshotClass", &v.volume_snapshot_class),
            ("volumeGroupSnapshotClass", &v.volume_group_snapshot_class),
        ] {
            if let Some(c) = class
                && let Err(e) = values::check_dns_subdomain(c)
            {
                ctx.invalid(&vp.key(field), e);
            }
        }
        Volumes {
            snapshot: v.snapshot.unwrap_or(SnapshotMode::Csi),
            group: v.group.unwrap_or(false),
            volume_snapshot_class: v.volume_snapshot_class,
            volume_group_snapshot_class: v.volume_group_snapshot_class,
            on_error: v.on_error.unwrap_or(VolumeOnError::Fail),
            ready_timeout: ctx.duration(
                &vp.key("readyTimeout"),
                v.ready_timeout.as_deref(),
                DEFAULT_READY_TIMEOUT,
            ),
            keep_failed: v.keep_failed.unwrap_or(false),
            move_data: v.move_data.unwrap_or(false),
            mover: mover(ctx, &vp.key("mover"), v.mover.unwrap_or_default()),
        }
    };
    let rp = path.key("rules");
    let (pre_items, post_items) = raw
        .rules
        .as_ref()
        .map(|r| {
            (
                r.pre.clone().unwrap_or_default(),
                r.post.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let max_freeze = ctx.duration(
        &rp.key("maxFreeze"),
        raw.rules.as_ref().and_then(|r| r.max_freeze.as_deref()),
        DEFAULT_MAX_FREEZE,
    );
    if max_freeze.is_zero() {
        ctx.msg(
            &rp.key("maxFreeze"),
            "found 0s; allowed: a positive duration such as `60s` (the longest the application may stay frozen)",
        );
    }
    let mut pre = rule_items(ctx, &rp.key("pre"), &pre_items, true, |index| {
        RuleOrigin::Policy { index }
    });
    let mut post = rule_items(ctx, &rp.key("post"), &post_items, false, |index| {
        RuleOrigin::Policy { index }
    });
    for rule in &pre {
        let RuleOrigin::Policy { index } = rule.origin else {
            continue;
        };
        for (j, action) in rule.actions.iter().enumerate() {
            if action.timeout > max_freeze {
                ctx.warn(
                    &rp.key("pre").index(index).key("actions").index(j).key("timeout"),
                    format!(
                        "warning: the timeout ({}) is longer than rules.maxFreeze ({}), which cuts the \
action off first and fails the backup; lower the timeout, or raise maxFreeze if the application may stay \
frozen that long",
                        values::format_duration(action.timeout),
                        values::format_duration(max_freeze)
                    ),
                );
            }
        }
    }
    for (field, name, target) in [
        ("preExecRule", &raw.pre_exec_rule, &mut pre),
        ("postExecRule", &raw.post_exec_rule, &mut post),
    ] {
        let Some(name) = name else { continue };
        match env.stork.get(name) {
            Some(items) => {
                if field == "postExecRule" && items.iter().any(|i| i.actions.iter().any(|a| a.background)) {
                    ctx.msg(&path.key(field), format!("found Stork rule `{name}` with `background: true` actions; allowed: held locks only in preExecRule"));
                }
                target.extend(items.iter().cloned());
            }
            None => {
                let all: Vec<&str> = env.stork.keys().map(String::as_str).collect();
                let hint = yaml::did_you_mean(name, &all)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                let allowed = if all.is_empty() {
                    "none defined: put a Stork Rule document in another key of the ConfigMap".to_string()
                } else {
                    all.join(", ")
                };
                ctx.msg(&path.key(field), format!("found Stork rule {name:?}, which does not exist or is invalid{hint}; allowed: {allowed}"));
            }
        }
    }
    let mut dumps = Vec::new();
    for (i, d) in raw.dumps.iter().flatten().enumerate() {
        let dp = path.key("dumps").index(i);
        let name = d.name.clone().unwrap_or_else(|| format!("dump-{i}"));
        ctx.label(&dp.key("name"), &name);
        if dumps.iter().any(|x: &Dump| x.name == name) {
            ctx.msg(
                &dp.key("name"),
                format!("found {name:?} again; allowed: unique dump names"),
            );
        }
        let pod_selector = pod_selector(ctx, &dp.key("podSelector"), &d.pod_selector);
        container(ctx, &dp.key("container"), &d.container);
        let to_exec = |c: &StringOrList| match c {
            StringOrList::String(s) => Exec::Shell(s.clone()),
            StringOrList::List(v) => Exec::Argv(v.clone()),
        };
        let command = to_exec(&d.command);
        if matches!(&command, Exec::Shell(s) if s.trim().is_empty())
            || matches!(&command, Exec::Argv(v) if v.is_empty())
        {
            ctx.msg(
                &dp.key("command"),
                "found an empty command; allowed: a shell string or a non-empty argv list",
            );
        }
        let dump = Dump {
            name,
            pod_selector,
            container: d.container.clone(),
            command,
            restore_command: d.restore_command.as_ref().map(to_exec),
            run_in_single_pod: d.run_in_single_pod.unwrap_or(false),
            timeout: ctx.duration(&dp.key("timeout"), d.timeout.as_deref(), DEFAULT_DUMP_TIMEOUT),
            while_frozen: d.while_frozen.unwrap_or(true),
            on_no_pods: d.on_no_pods.unwrap_or(OnNoPods::Fail),
        };
        dump_warnings(ctx, &dp, &dump);
        dumps.push(dump);
    }
    let retention = match (&raw.retention, env.default_retention) {
        (Some(r), _) => retention(ctx, &path.key("retention"), r),
        (None, Some(d)) => Some(d.clone()),
        (None, None) => {
            ctx.msg(
                &path.key("retention"),
                "found no retention and no defaults.retention; allowed: e.g. {keepLast: 3, keepDaily: 7}",
            );
            None
        }
    };
    let storage = match raw.storage.as_ref().or(env.defaults.storage.as_ref()) {
        Some(name) => {
            let p = path.key("storage");
            check_ref(ctx, &p, "storage", name, env.storages.keys(), env.bad_storages)
                .then(|| env.storages[name].clone())
        }
        None => {
            ctx.msg(
                &path.key("storage"),
                "found no storage and no defaults.storage; allowed: a name under `storages`",
            );
            None
        }
    };
    if volumes.move_data {
        let vp = path.key("volumes");
        if volumes.snapshot == SnapshotMode::None {
            ctx.msg(
                &vp.key("moveData"),
                "found `moveData: true` with `snapshot: none`; allowed: `snapshot: csi` (the mover copies the snapshots' files)",
            );
        }
        if let Some(s) = &storage
            && s.repository.is_none()
        {
            ctx.msg(
                &vp.key("moveData"),
                format!(
                    "found `moveData: true` but storage {:?} has no `repository`; allowed: add `repository: {{passwordSecret: {{name, key}}}}` under `storages.{}`, or `moveData: false`",
                    s.name, s.name
                ),
            );
        }
    }
    let webhooks = match &raw.webhooks {
        None => env.webhooks.to_vec(),
        Some(names) => {
            let valid: Vec<String> = env.webhooks.iter().map(|w| w.name.clone()).collect();
            names
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    check_ref(
                        ctx,
                        &path.key("webhooks").index(*i),
                        "webhook",
                        n,
                        valid.iter(),
                        env.bad_webhooks,
                    )
                })
                .filter_map(|(_, n)| env.webhooks.iter().find(|w| &w.name == n).cloned())
                .collect()
        }
    };
    Some(Policy {
        name: raw.name,
        schedule: schedule?,
        starting_deadline,
        run_on_create: raw.run_on_create.unwrap_or(false),
        suspend: raw.suspend.unwrap_or(false),
        namespaces: namespaces?,
        selector: sel,
        resources,
        volumes,
        pre,
        post,
        max_freeze,
        honor_velero_annotations: raw.honor_velero_annotations.unwrap_or(false),
        dumps,
        retention: retention?,
        storage: storage?,
        webhooks,
    })
}
