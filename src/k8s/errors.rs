//! API errors in words people read: the server's `<reason>: <message>` as kubectl prints it, never kube's
//! `Debug` dump of the `Status`, and an error chain on one line that uses it for every Kubernetes cause.

use std::error::Error as StdError;

/// One line for a Kubernetes client error: `AlreadyExists: volumesnapshots "x" already exists` for an
/// API error; the transport failure and its causes otherwise (without kube's `ServiceError:` prefix).
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                format!("HTTP {}", status.code)
            } else {
                status.reason.clone()
            };
            format!("{reason}: {}", status.message)
        }
        kube::Error::Service(source) => chain(source.as_ref()),
        kube::Error::HyperError(source) => chain(source),
        other => {
            let mut text = other.to_string();
            let mut cause = other.source();
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

/// `err` and its causes on one line, `: `-separated; a [`kube::Error`] anywhere in the chain is worded by
/// [`describe`] (which covers its own causes). Every user-facing error line goes through this.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(kube) = e.downcast_ref::<kube::Error>() {
            parts.push(describe(kube));
            break;
        }
        let text = e.to_string();
        // Wrappers that repeat their cause's text (`#[error("{0}")]`) would print it twice.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn already_exists() -> kube::Error {
        kube::Error::Api(Box::new(
            Status::failure(
                r#"volumesnapshots.snapshot.storage.k8s.io "data-ff-1" already exists"#,
                "AlreadyExists",
            )
            .with_code(409),
        ))
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create VolumeSnapshot app/data-ff-1")]
    struct Creating(#[source] kube::Error);

    #[test]
    fn given_an_api_error_then_it_reads_like_kubectl_without_a_debug_dump() {
        let text = describe(&already_exists());
        assert_eq!(
            text,
            r#"AlreadyExists: volumesnapshots.snapshot.storage.k8s.io "data-ff-1" already exists"#
        );
    }

    #[test]
    fn given_an_api_error_under_context_when_chained_then_context_then_reason_and_message() {
        let text = chain(&Creating(already_exists()));
        assert_eq!(
            text,
            r#"cannot create VolumeSnapshot app/data-ff-1: AlreadyExists: volumesnapshots.snapshot.storage.k8s.io "data-ff-1" already exists"#
        );
        assert!(!text.contains("Status {"), "{text}");
    }

    #[test]
    fn given_a_transport_error_then_kubes_prefix_is_dropped_and_causes_kept() {
        let e = kube::Error::Service(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(describe(&e), "connection reset");
    }
}
