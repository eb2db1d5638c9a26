//! One-line summaries shared by a backup's Kubernetes Events and its webhook `message`, and the one
//! function that bounds text sent to other systems. Pure.

use std::fmt::Write as _;

use crate::backup::Manifest;

/// Longest Event message and webhook `message` (the API server truncates Event messages at 1 KiB).
pub const MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes on a char boundary, ending in `...` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// `backup <policy>/<id>: <status>: <n> objects in <k> kinds, <b> bytes[, frozen for <ms> ms][; <p>
/// problem(s), first: <problem>]`, bounded to [`MESSAGE_BYTES`].
pub fn backup(m: &Manifest) -> String {
    let objects: u64 = m
        .objects
        .values()
        .chain(m.cluster_objects.values())
        .map(|k| k.count)
        .sum();
    let kinds = m.objects.len() + m.cluster_objects.len();
    let bytes: u64 = m.artifacts.values().map(|a| a.size).sum();
    let mut line = format!(
        "backup {}/{}: {:?}: {objects} objects in {kinds} kinds, {bytes} bytes",
        m.policy, m.backup_id, m.status
    );
    if let Some(ms) = m.hooks.as_ref().and_then(|h| h.freeze_window_millis) {
        write!(line, ", frozen for {ms} ms").ok();
    }
    if let Some(first) = m.problems.first() {
        write!(line, "; {} problem(s), first: {first}", m.problems.len()).ok();
    }
    bounded(&line, MESSAGE_BYTES)
}

/// `backup of <policy> failed before a manifest was written: <error>`, bounded to [`MESSAGE_BYTES`].
pub fn backup_error(policy: &str, error: &str) -> String {
    bounded(
        &format!("backup of {policy} failed before a manifest was written: {error}"),
        MESSAGE_BYTES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_short_text_when_bounded_then_unchanged_and_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(20), 10);
        assert_eq!(cut, "ééé...");
        assert!(cut.len() <= 10);
    }

    #[test]
    fn given_manifest_with_problems_then_summary_names_status_counts_and_first_problem() {
        let m = crate::report::fake::manifest(crate::backup::Status::PartiallyFailed);
        let line = backup(&m);
        assert_eq!(
            line,
            "backup app/20261123T120000Z: PartiallyFailed: 3 objects in 1 kinds, 100 bytes, frozen for 40 ms; \
             1 problem(s), first: dump data of db/db-0 failed: exit code 5"
        );
        let long = crate::backup::Manifest {
            problems: vec!["x".repeat(5000)],
            ..m
        };
        assert!(backup(&long).len() <= MESSAGE_BYTES);
    }
}
