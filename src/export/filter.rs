//! `resources.include`/`exclude`: which kinds are exported, by `*`, plural, `plural.group` or Kind.

use kube::discovery::ApiResource;

/// Kinds exported but marked "skip on restore": derived objects their controllers recreate.
pub const SKIP_ON_RESTORE: &[&str] = &["endpoints", "endpointslices.discovery.k8s.io"];

/// The include/exclude filter of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl ResourceFilter {
    /// A filter from a policy's lists (already defaulted by policy validation).
    pub fn new(include: &[String], exclude: &[String]) -> ResourceFilter {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        ResourceFilter {
            include: lower(include),
            exclude: lower(exclude),
        }
    }

    /// Everything except the default exclusions (events).
    pub fn default_policy() -> ResourceFilter {
        let exclude: Vec<String> = crate::policy::DEFAULT_EXCLUDES
            .iter()
            .map(|s| s.to_string())
            .collect();
        ResourceFilter::new(&["*".into()], &exclude)
    }

    /// Whether objects of `resource` are exported.
    pub fn allows(&self, resource: &ApiResource) -> bool {
        let hit = |pattern: &String| matches(pattern, resource);
        self.include.iter().any(hit) && !self.exclude.iter().any(hit)
    }
}

fn matches(pattern: &str, resource: &ApiResource) -> bool {
    pattern == "*"
        || pattern == resource.plural
        || pattern == format!("{}.{}", resource.plural, resource.group)
        || pattern == resource.kind.to_ascii_lowercase()
}

/// `plural` for the core group, else `plural.group`: how kinds are named in manifests and filters.
pub fn kind_id(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

/// Whether restore should skip objects of this kind.
pub fn skip_on_restore(resource: &ApiResource) -> bool {
    SKIP_ON_RESTORE.contains(&kind_id(resource).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: if group.is_empty() {
                "v1".into()
            } else {
                format!("{group}/v1")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn given_default_filter_then_both_event_kinds_are_excluded_and_others_allowed() {
        let filter = ResourceFilter::default_policy();
        assert!(!filter.allows(&resource("", "Event", "events")));
        assert!(!filter.allows(&resource("events.k8s.io", "Event", "events")));
        assert!(filter.allows(&resource("apps", "Deployment", "deployments")));
    }

    #[test]
    fn given_patterns_by_plural_group_and_kind_then_each_form_matches() {
        let filter = ResourceFilter::new(
            &[
                "deployments".into(),
                "carts.shop.example.com".into(),
                "ConfigMap".into(),
            ],
            &["Secret".into()],
        );
        assert!(filter.allows(&resource("apps", "Deployment", "deployments")));
        assert!(filter.allows(&resource("shop.example.com", "Cart", "carts")));
        assert!(filter.allows(&resource("", "ConfigMap", "configmaps")));
        assert!(!filter.allows(&resource("other.example.com", "Cart", "carts")));
        assert!(!filter.allows(&resource("", "Service", "services")));

        let all_but_secrets = ResourceFilter::new(&["*".into()], &["Secret".into()]);
        assert!(!all_but_secrets.allows(&resource("", "Secret", "secrets")));
    }

    #[test]
    fn given_endpoints_and_slices_then_marked_skip_on_restore() {
        assert!(skip_on_restore(&resource("", "Endpoints", "endpoints")));
        assert!(skip_on_restore(&resource(
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices"
        )));
        assert!(!skip_on_restore(&resource("", "Service", "services")));
    }
}
