//! The last-backup annotation on each backed-up Namespace, so the namespace's owners see when it was
//! last backed up without access to freezeframe's namespace:
//! `last-backup.freezeframe.dev/<policy>` = `{"backupId":"…","phase":"Completed","finishedAt":"…"}`
//! (one key per policy covering the namespace; written with a merge patch, so other annotations are
//! untouched). Pure.

use serde_json::{Value, json};

use crate::backup::Manifest;
use crate::report::payload::Phase;

/// Prefix of the per-policy last-backup annotation.
pub const LAST_BACKUP_PREFIX: &str = "last-backup.freezeframe.dev/";

/// The annotation holding `policy`'s last backup of a namespace.
pub fn last_backup_annotation(policy: &str) -> String {
    format!("{LAST_BACKUP_PREFIX}{policy}")
}

/// The annotation value for `m`: compact JSON with `backupId`, `phase`, `finishedAt` (RFC 3339, seconds).
pub fn last_backup_value(m: &Manifest) -> String {
    json!({
        "backupId": m.backup_id,
        "phase": Phase::from(m.status),
        "finishedAt": m.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .to_string()
}

/// The merge patch that records `m` on a Namespace.
pub fn last_backup_patch(m: &Manifest) -> Value {
    json!({"metadata": {"annotations": {last_backup_annotation(&m.policy): last_backup_value(m)}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Status;

    #[test]
    fn given_manifest_then_patch_sets_one_annotation_with_id_phase_and_time() {
        let m = crate::report::fake::manifest(Status::Completed);
        assert_eq!(
            last_backup_patch(&m),
            json!({"metadata": {"annotations": {"last-backup.freezeframe.dev/app":
                r#"{"backupId":"20261123T120000Z","phase":"Completed","finishedAt":"2026-11-23T12:00:05Z"}"#}}})
        );
    }
}
