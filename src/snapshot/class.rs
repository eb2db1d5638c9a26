//! Which snapshot class a volume uses: the policy's class, else the one default class of the volume's
//! CSI driver. Pure functions over the listed classes, so every rule has a unit test.

use serde_json::Value;

/// A VolumeSnapshotClass or VolumeGroupSnapshotClass as far as the choice needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    /// Name.
    pub name: String,
    /// CSI driver.
    pub driver: String,
    /// Marked default (`snapshot.storage.kubernetes.io/is-default-class` or the group equivalent).
    pub default: bool,
    /// `deletionPolicy`.
    pub deletion_policy: String,
}

/// The kind of class being chosen: names the annotation and policy field in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassKind {
    /// VolumeSnapshotClass.
    Snapshot,
    /// VolumeGroupSnapshotClass.
    Group,
}

impl ClassKind {
    /// The default-class annotation.
    pub fn default_annotation(self) -> &'static str {
        match self {
            ClassKind::Snapshot => "snapshot.storage.kubernetes.io/is-default-class",
            ClassKind::Group => "groupsnapshot.storage.kubernetes.io/is-default-class",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            ClassKind::Snapshot => "VolumeSnapshotClass",
            ClassKind::Group => "VolumeGroupSnapshotClass",
        }
    }

    fn policy_field(self) -> &'static str {
        match self {
            ClassKind::Snapshot => "volumes.volumeSnapshotClass",
            ClassKind::Group => "volumes.volumeGroupSnapshotClass",
        }
    }
}

impl ClassInfo {
    /// Read a class object (dynamic JSON).
    pub fn from_object(kind: ClassKind, obj: &Value) -> ClassInfo {
        ClassInfo {
            name: obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            driver: obj["driver"].as_str().unwrap_or_default().to_string(),
            default: obj["metadata"]["annotations"][kind.default_annotation()] == "true",
            deletion_policy: obj["deletionPolicy"].as_str().unwrap_or("Delete").to_string(),
        }
    }
}

/// Choose the class for a volume on `driver`: `named` (the policy's) must exist and be for that driver;
/// without it, exactly one default class of that driver must exist. The error says what to fix.
pub fn choose<'c>(
    kind: ClassKind,
    classes: &'c [ClassInfo],
    named: Option<&str>,
    driver: &str,
) -> Result<&'c ClassInfo, String> {
    if let Some(n) = named {
        let class = classes
            .iter()
            .find(|c| c.name == n)
            .ok_or_else(|| format!("{} \"{n}\" ({}) does not exist", kind.kind(), kind.policy_field()))?;
        if class.driver != driver {
            return Err(format!(
                "{} \"{n}\" ({}) is for driver {}, but the volume is on driver {driver}",
                kind.kind(),
                kind.policy_field(),
                class.driver
            ));
        }
        return Ok(class);
    }
    let defaults: Vec<&ClassInfo> = classes
        .iter()
        .filter(|c| c.default && c.driver == driver)
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no default {} for driver {driver}: annotate one with {}=\"true\" or set {}",
            kind.kind(),
            kind.default_annotation(),
            kind.policy_field()
        )),
        many => Err(format!(
            "{} default {}es for driver {driver} ({}): set {}",
            many.len(),
            kind.kind(),
            many.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            kind.policy_field()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, default: bool) -> ClassInfo {
        ClassInfo {
            name: name.into(),
            driver: driver.into(),
            default,
            deletion_policy: "Delete".into(),
        }
    }

    #[test]
    fn given_no_policy_class_then_the_default_class_of_the_volumes_driver_is_chosen() {
        let classes = [
            class("ebs", "ebs.csi.aws.com", true),
            class("sandbox", "sandbox.freezeframe.dev", true),
            class("sandbox-slow", "sandbox.freezeframe.dev", false),
        ];
        let c = choose(ClassKind::Snapshot, &classes, None, "sandbox.freezeframe.dev").unwrap();
        assert_eq!(c.name, "sandbox");
    }

    #[test]
    fn given_policy_class_then_it_wins_over_the_default() {
        let classes = [class("sandbox", "d", true), class("slow", "d", false)];
        assert_eq!(
            choose(ClassKind::Snapshot, &classes, Some("slow"), "d")
                .unwrap()
                .name,
            "slow"
        );
    }

    #[test]
    fn given_policy_class_of_another_driver_then_error_names_both_drivers() {
        let classes = [class("ebs", "ebs.csi.aws.com", false)];
        let e = choose(ClassKind::Snapshot, &classes, Some("ebs"), "d").unwrap_err();
        assert!(e.contains("ebs.csi.aws.com") && e.contains("driver d"), "{e}");
    }

    #[test]
    fn given_no_default_for_the_driver_then_error_says_how_to_fix() {
        let classes = [class("ebs", "ebs.csi.aws.com", true), class("x", "d", false)];
        let e = choose(ClassKind::Group, &classes, None, "d").unwrap_err();
        assert!(
            e.contains("no default VolumeGroupSnapshotClass for driver d"),
            "{e}"
        );
        assert!(e.contains("volumes.volumeGroupSnapshotClass"), "{e}");
        let e = choose(ClassKind::Snapshot, &classes, Some("missing"), "d").unwrap_err();
        assert!(e.contains("\"missing\"") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn given_two_defaults_for_the_driver_then_error_lists_them() {
        let classes = [class("a", "d", true), class("b", "d", true)];
        let e = choose(ClassKind::Snapshot, &classes, None, "d").unwrap_err();
        assert!(e.contains("a, b"), "{e}");
    }
}
