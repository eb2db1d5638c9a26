//! Behaviour of the whole parse + validate pipeline on realistic documents.

use super::*;

/// The contract example from the issue, verbatim (plus the Stork rule it references).
const CONTRACT: &str = r#"
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages:
  primary:
    s3: {bucket: dr-backups, prefix: cluster-a, region: us-east-1,
         endpoint: "http://seaweedfs.storage:8333", forcePathStyle: true,
         credentialsSecret: s3-credentials}          # optional; default AWS chain (env, IRSA, profile)
  local:
    filesystem: {path: /backups}
webhooks:
  - name: ops
    url: https://hooks.example.com/dr
    events: [backup.failed, backup.partially_failed, backup.succeeded, prune.completed]
    secretRef: {name: webhook-hmac, key: key}        # optional HMAC key
defaults: {storage: primary, timezone: UTC}
policies:
  - name: cassandra-ring
    schedule: "0 */6 * * *"                 # 5-field, @hourly/@daily/..., or CRON_TZ-style timezone field
    namespaces: [cassandra]                 # or namespaceSelector: {matchLabels: ...}
    selector: {matchLabels: {app: cassandra}}   # omit = whole namespace
    resources: {include: ["*"], exclude: [events, events.events.k8s.io]}
    volumes: {snapshot: csi, group: true, volumeSnapshotClass: csi-snapclass}
    rules:
      pre:
        - podSelector: {app: cassandra}
          container: cassandra
          actions:
            - {type: command, value: "nodetool flush", timeout: 60s}
      post: []
    preExecRule: cassandra-presnap-rule     # alternatively, a Stork Rule from this ConfigMap
    dumps:
      - {podSelector: {app: postgres}, container: postgres, command: "pg_dumpall -U postgres",
         restoreCommand: "psql -U postgres", runInSinglePod: true}
    retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 6, keepWithin: 48h}
    storage: primary
"#;

const STORK_RULE: &str = r#"
apiVersion: stork.libopenstorage.org/v1alpha1
kind: Rule
metadata:
  name: cassandra-presnap-rule
rules:
  - podSelector:
      app: cassandra
    actions:
      - type: command
        value: nodetool flush
"#;

fn with_rule(policies: &str) -> PolicySet {
    let data = BTreeMap::from([
        (POLICIES_KEY.to_string(), policies.to_string()),
        ("cassandra-presnap-rule.yaml".to_string(), STORK_RULE.to_string()),
    ]);
    parse_configmap_data(&data)
}

/// A minimal valid document whose single policy body is `policy` (indented as a list item).
fn minimal(policy: &str) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\nstorages:\n  primary:\n    filesystem: {{path: /b}}\n\
defaults: {{storage: primary}}\npolicies:\n  - name: p\n    schedule: '@daily'\n    namespaces: [app]\n    \
retention: {{keepLast: 3}}\n{policy}"
    )
}

fn only_problem(set: &PolicySet) -> &Problem {
    assert_eq!(set.problems.len(), 1, "{:#?}", set.problems);
    &set.problems[0]
}

#[test]
fn given_contract_example_when_parsed_then_valid_with_every_field_resolved() {
    let set = with_rule(CONTRACT);
    assert!(set.is_valid(), "{:#?}", set.problems);
    let p = set.policy("cassandra-ring").unwrap();
    assert_eq!(p.storage.name, "primary");
    assert!(matches!(&p.storage.backend, Backend::S3(s3) if s3.force_path_style && s3.prefix == "cluster-a"));
    assert_eq!(p.namespaces, Namespaces::Names(vec!["cassandra".into()]));
    assert!(p.volumes.group);
    assert_eq!(p.pre.len(), 2, "policy rule then the Stork rule item");
    assert_eq!(p.pre[0].container.as_deref(), Some("cassandra"));
    assert_eq!(p.pre[0].actions[0].exec, Exec::Shell("nodetool flush".into()));
    assert_eq!(p.pre[0].actions[0].timeout, std::time::Duration::from_secs(60));
    assert_eq!(
        p.pre[1].origin,
        RuleOrigin::StorkRule {
            name: "cassandra-presnap-rule".into(),
            index: 0
        }
    );
    assert_eq!(p.dumps[0].name, "dump-0");
    assert!(p.dumps[0].run_in_single_pod);
    assert_eq!(
        p.retention.keep_within,
        Some(std::time::Duration::from_secs(48 * 3600))
    );
    assert_eq!(p.webhooks.len(), 1);
}

#[test]
fn given_unknown_field_when_validated_then_error_names_policy_path_line_and_suggestion() {
    let set = parse_str("p.yaml", &minimal("    retenshun: {keepLast: 1}\n"));
    let pr = only_problem(&set);
    assert_eq!(pr.policy.as_deref(), Some("p"));
    assert_eq!(pr.path, "policies[0].retenshun");
    assert_eq!(pr.location, Some(Location { line: 12, column: 5 }));
    assert!(pr.message.contains("did you mean `retention`?"), "{pr}");
    assert!(
        pr.to_string()
            .starts_with("p.yaml:12:5: policy `p`: policies[0].retenshun:"),
        "{pr}"
    );
}

#[test]
fn given_bare_number_timeout_when_validated_then_error_says_units_required() {
    let set = parse_str(
        "p.yaml",
        &minimal(
            "    rules:\n      pre:\n        - podSelector: {app: x}\n          actions: [{value: sync, timeout: 300}]\n",
        ),
    );
    let pr = only_problem(&set);
    assert_eq!(pr.path, "policies[0].rules.pre[0].actions[0].timeout");
    assert!(pr.message.contains("units are required"), "{pr}");
    assert_eq!(pr.location, Some(Location { line: 15, column: 44 }));
}

#[test]
fn given_one_invalid_policy_when_validated_then_the_valid_ones_remain() {
    let text = minimal(
        "  - name: bad\n    schedule: 'every day'\n    namespaces: [x]\n    retention: {keepLast: 1}\n  - name: good\n    schedule: '@hourly'\n    namespaces: [y]\n    retention: {keepLast: 1}\n",
    );
    let set = parse_str("p.yaml", &text);
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p", "good"]);
    assert_eq!(set.invalid_policies, ["bad"]);
    assert!(
        set.problems.iter().all(|p| p.policy.as_deref() == Some("bad")),
        "{:#?}",
        set.problems
    );
    assert!(set.problems.iter().any(|p| p.path == "policies[1].schedule"));
}

#[test]
fn given_duplicate_policy_names_when_validated_then_both_are_invalid() {
    let set = parse_str(
        "p.yaml",
        &minimal("  - name: p\n    schedule: '@hourly'\n    namespaces: [y]\n    retention: {keepLast: 1}\n"),
    );
    assert!(set.policies.is_empty());
    assert_eq!(set.problems.len(), 2, "{:#?}", set.problems);
    assert!(set.problems[0].message.contains("unique policy names"));
}

#[test]
fn given_policy_name_with_slash_or_dots_when_validated_then_rejected_as_dns_label() {
    for bad in ["a/b", "..", "Caps"] {
        let text = minimal("").replace("name: p", &format!("name: {bad:?}"));
        let set = parse_str("p.yaml", &text);
        assert!(set.policies.is_empty(), "{bad}");
        assert!(
            set.problems[0].message.contains("DNS-1123 label"),
            "{:#?}",
            set.problems
        );
    }
}

#[test]
fn given_missing_storage_reference_when_validated_then_error_lists_existing_ones() {
    let set = parse_str("p.yaml", &minimal("    storage: primery\n"));
    let pr = only_problem(&set);
    assert!(pr.message.contains("did you mean `primary`?"), "{pr}");
    assert!(pr.message.contains("`primary`"), "{pr}");
}

#[test]
fn given_missing_stork_rule_and_webhook_when_validated_then_each_is_reported() {
    let set = parse_str("p.yaml", &minimal("    preExecRule: nope\n    webhooks: [ops]\n"));
    assert_eq!(set.problems.len(), 2, "{:#?}", set.problems);
    assert_eq!(set.problems[0].path, "policies[0].preExecRule");
    assert_eq!(set.problems[1].path, "policies[0].webhooks[0]");
}

#[test]
fn given_retention_without_keep_rule_or_with_negative_count_when_validated_then_rejected() {
    let none = parse_str("p.yaml", &minimal("").replace("{keepLast: 3}", "{keepLast: 0}"));
    assert!(
        only_problem(&none).message.contains("at least one"),
        "{:#?}",
        none.problems
    );
    let neg = parse_str("p.yaml", &minimal("").replace("{keepLast: 3}", "{keepLast: -1}"));
    let pr = only_problem(&neg);
    assert_eq!(pr.path, "policies[0].retention.keepLast");
    assert!(pr.message.contains("found -1"), "{pr}");
    let within = parse_str(
        "p.yaml",
        &minimal("").replace("{keepLast: 3}", "{keepWithin: 48}"),
    );
    assert!(only_problem(&within).message.contains("units are required"));
}

#[test]
fn given_invalid_label_selector_when_validated_then_problem_points_at_the_key() {
    let set = parse_str(
        "p.yaml",
        &minimal("    selector:\n      matchExpressions: [{key: tier, operator: Inn, values: [a]}]\n"),
    );
    let pr = only_problem(&set);
    assert_eq!(pr.path, "policies[0].selector.matchExpressions[0].operator");
    assert!(pr.message.contains("In, NotIn"), "{pr}");
}

#[test]
fn given_background_action_without_wait_cmd_when_validated_then_rejected() {
    let set = parse_str(
        "p.yaml",
        &minimal(
            "    rules:\n      pre:\n        - podSelector: {app: x}\n          actions: [{value: 'sleep 1', background: true}]\n",
        ),
    );
    assert!(only_problem(&set).message.contains("${WAIT_CMD}"));
}

#[test]
fn given_enum_typo_when_validated_then_did_you_mean_lists_allowed_words() {
    let set = parse_str(
        "p.yaml",
        &minimal(
            "    rules:\n      pre:\n        - podSelector: {app: x}\n          onNoPods: skp\n          actions: [{value: x}]\n",
        ),
    );
    let pr = only_problem(&set);
    assert!(pr.message.contains("did you mean `skip`?"), "{pr}");
}

#[test]
fn given_broken_yaml_when_parsed_then_single_problem_with_location() {
    let set = parse_str("p.yaml", "policies: [\n  - a\n");
    let pr = only_problem(&set);
    assert!(pr.message.starts_with("invalid YAML"), "{pr}");
    assert!(pr.location.is_some());
}

#[test]
fn given_configmap_manifest_when_parsed_then_data_keys_are_used() {
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: freezeframe-policies}}\ndata:\n  policies.yaml: {:?}\n  cassandra-presnap-rule.yaml: {:?}\n",
        CONTRACT, STORK_RULE
    );
    let set = parse_str("cm.yaml", &manifest);
    assert!(set.is_valid(), "{:#?}", set.problems);
    assert!(set.stork_rules.contains_key("cassandra-presnap-rule"));
}

#[test]
fn given_wrong_kind_when_parsed_then_error_says_what_is_allowed() {
    let set = parse_str(
        "p.yaml",
        &minimal("").replace("kind: PolicySet", "kind: Policyset"),
    );
    let pr = only_problem(&set);
    assert_eq!(pr.path, "kind");
    assert!(pr.message.contains("`PolicySet`"), "{pr}");
}

mod examples {
    use super::*;

    fn valid(name: &str, text: &str) -> PolicySet {
        let set = parse_str(name, text);
        assert!(set.is_valid(), "{name}: {:#?}", set.problems);
        assert_eq!(set.policies.len(), 1, "{name}");
        set
    }

    #[test]
    fn given_cassandra_example_then_ring_is_flushed_by_policy_and_stork_rule() {
        let set = valid("cassandra.yaml", include_str!("../../policies/cassandra.yaml"));
        let p = &set.policies[0];
        assert_eq!(p.pre.len(), 2);
        assert!(
            matches!(&p.pre[1].origin, RuleOrigin::StorkRule { name, .. } if name == "cassandra-presnap-rule")
        );
        assert!(
            p.pre
                .iter()
                .all(|r| r.actions[0].exec == Exec::Shell("nodetool flush".into()))
        );
    }

    #[test]
    fn given_mysql_example_then_read_lock_is_held_in_background_in_berlin_time() {
        let set = valid("mysql.yaml", include_str!("../../policies/mysql.yaml"));
        let p = &set.policies[0];
        let a = &p.pre[0].actions[0];
        assert!(a.background);
        assert!(
            matches!(&a.exec, Exec::Shell(s) if s.contains("FLUSH TABLES WITH READ LOCK") && s.contains(WAIT_CMD))
        );
        assert_eq!(p.schedule.timezone(), chrono_tz::Europe::Berlin);
        assert_eq!(p.starting_deadline, std::time::Duration::from_secs(1800));
    }

    #[test]
    fn given_postgresql_example_then_checkpoint_argv_and_single_pod_dump() {
        let set = valid("postgresql.yaml", include_str!("../../policies/postgresql.yaml"));
        let p = &set.policies[0];
        assert!(matches!(&p.pre[0].actions[0].exec, Exec::Argv(v) if v.last().unwrap() == "CHECKPOINT"));
        assert_eq!(p.dumps[0].name, "pg-dumpall");
        assert!(p.dumps[0].run_in_single_pod && !p.dumps[0].while_frozen);
        assert_eq!(p.webhooks[0].name, "ops");
    }

    #[test]
    fn given_mongodb_example_then_unlock_runs_at_thaw() {
        let set = valid("mongodb.yaml", include_str!("../../policies/mongodb.yaml"));
        let p = &set.policies[0];
        assert!(matches!(&p.post[0].actions[0].exec, Exec::Shell(s) if s.contains("fsyncUnlock")));
        assert_eq!(p.post[0].actions[0].on_error, OnError::Continue);
        assert_eq!(p.volumes.on_error, VolumeOnError::Partial);
    }

    #[test]
    fn given_redis_example_then_bgsave_waits_for_lastsave() {
        let set = valid("redis.yaml", include_str!("../../policies/redis.yaml"));
        assert!(
            matches!(&set.policies[0].pre[0].actions[0].exec, Exec::Shell(s) if s.contains("BGSAVE") && s.contains("LASTSAVE"))
        );
    }

    #[test]
    fn given_elasticsearch_example_then_flush_runs_in_one_pod_on_weekdays() {
        let set = valid(
            "elasticsearch.yaml",
            include_str!("../../policies/elasticsearch.yaml"),
        );
        let p = &set.policies[0];
        assert!(p.pre[0].actions[0].run_in_single_pod);
        assert_eq!(p.schedule.timezone(), chrono_tz::America::New_York);
    }

    #[test]
    fn given_whole_namespace_example_then_defaults_retention_and_namespace_selector_apply() {
        let set = valid(
            "whole-namespace.yaml",
            include_str!("../../policies/whole-namespace.yaml"),
        );
        let p = &set.policies[0];
        assert!(p.selector.is_none() && p.pre.is_empty() && p.run_on_create);
        assert!(matches!(p.namespaces, Namespaces::Selector(_)));
        assert_eq!(p.retention.keep_monthly, Some(12));
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn given_arbitrary_bytes_when_parsed_then_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let set = parse_str("fuzz.yaml", &text);
            // Random bytes are never a valid PolicySet: something must be reported, at a real position.
            prop_assert!(!set.problems.is_empty());
            let lines = text.lines().count() + 1;
            for p in &set.problems {
                prop_assert!(p.location.is_none_or(|l| l.line >= 1 && l.line <= lines), "{p}");
            }
        }

        #[test]
        fn given_near_valid_document_with_one_edit_when_parsed_then_never_panics_and_problems_have_paths(
            pos in any::<prop::sample::Index>(),
            edit in prop_oneof![
                Just(""), Just(":"), Just("- "), Just("\n"), Just("{"), Just("]"), Just("300"), Just("-1"),
                Just("*a"), Just("&a "), Just("!!str "), Just("'"), Just("\""), Just("  "), Just("~"), Just("@"),
            ],
            delete in 0usize..8,
        ) {
            let base = CONTRACT;
            let mut at = pos.index(base.len());
            while !base.is_char_boundary(at) { at -= 1; }
            let mut end = (at + delete).min(base.len());
            while !base.is_char_boundary(end) { end -= 1; }
            let text = format!("{}{}{}", &base[..at], edit, &base[end..]);
            let set = with_rule(&text);
            let lines = text.lines().count() + 1;
            for p in &set.problems {
                prop_assert!(!p.path.is_empty() && !p.message.is_empty());
                prop_assert!(p.location.is_none_or(|l| l.line >= 1 && l.line <= lines), "{p}");
            }
            if set.is_valid() {
                prop_assert_eq!(set.policies.len(), 1);
            }
        }
    }
}

#[test]
fn given_several_typos_in_one_policy_when_validated_then_all_are_reported_at_once() {
    let set = parse_str(
        "p.yaml",
        &minimal("    shedule: x\n    storag: primary\n    startingDeadline: 10\n"),
    );
    let paths: Vec<&str> = set.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "policies[0].shedule",
            "policies[0].storag",
            "policies[0].startingDeadline"
        ],
        "{:#?}",
        set.problems
    );
}

/// The data-mover contract from the issue: `volumes.moveData`, `volumes.mover`, `repository`.
const MOVE_DATA: &str = r#"
apiVersion: freezeframe.dev/v1alpha1
kind: PolicySet
storages:
  primary:
    s3: {bucket: dr, endpoint: "http://127.0.0.1:8333", forcePathStyle: true}
    repository:
      passwordSecret: {name: freezeframe-repository, key: password}
policies:
  - name: shop
    schedule: '@daily'
    namespaces: [shop]
    retention: {keepLast: 3}
    storage: primary
    volumes:
      snapshot: csi
      group: true
      moveData: true
      mover:
        concurrency: 4
        resources: {requests: {cpu: 250m, memory: 256Mi}, limits: {memory: 1Gi}}
        nodeSelector: {}
        tolerations: []
        timeout: 2h
"#;

#[test]
fn given_move_data_contract_when_parsed_then_mover_and_repository_are_resolved() {
    let set = parse_str("shop.yaml", MOVE_DATA);
    assert!(set.is_valid(), "{:#?}", set.problems);
    let p = set.policy("shop").unwrap();
    assert!(p.volumes.move_data);
    let m = &p.volumes.mover;
    assert_eq!(m.concurrency, 4);
    assert_eq!(m.timeout, std::time::Duration::from_secs(7200));
    assert_eq!(m.resources.requests["cpu"], "250m");
    assert_eq!(m.resources.requests["memory"], "256Mi");
    assert_eq!(m.resources.limits["memory"], "1Gi");
    let repo = p.storage.repository.as_ref().unwrap();
    assert_eq!(repo.password_secret.name, "freezeframe-repository");
    assert_eq!(repo.password_secret.key, "password");
    assert_eq!(repo.prune_every, DEFAULT_PRUNE_EVERY);
}

#[test]
fn given_no_mover_section_when_parsed_then_defaults_apply_and_data_is_not_moved() {
    let set = parse_str("p.yaml", &minimal(""));
    let p = &set.policies[0];
    assert!(!p.volumes.move_data);
    assert_eq!(p.volumes.mover, Mover::default());
    assert_eq!(p.volumes.mover.concurrency, 4);
    assert_eq!(p.volumes.mover.timeout, DEFAULT_MOVER_TIMEOUT);
    assert!(p.storage.repository.is_none());
}

#[test]
fn given_move_data_on_a_storage_without_repository_when_validated_then_error_says_how_to_add_one() {
    let set = parse_str("p.yaml", &minimal("    volumes: {moveData: true}\n"));
    let pr = only_problem(&set);
    assert_eq!(pr.path, "policies[0].volumes.moveData");
    assert!(pr.message.contains("has no `repository`"), "{pr}");
    assert!(pr.message.contains("storages.primary"), "{pr}");
}

#[test]
fn given_bad_mover_values_when_validated_then_each_error_names_its_field() {
    let set = parse_str(
        "p.yaml",
        &minimal(
            "    volumes:\n      mover:\n        concurrency: 0\n        resources: {requests: {cpu: 250 m}, limits: {memory: 1GB}}\n        nodeSelector: {'bad key!': x}\n        tolerations: [{operator: Maybe, effect: Never}]\n        timeout: 7200\n",
        ),
    );
    let paths: Vec<&str> = set.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "policies[0].volumes.mover.concurrency",
        "policies[0].volumes.mover.timeout",
        "policies[0].volumes.mover.resources.requests.cpu",
        "policies[0].volumes.mover.resources.limits.memory",
        "policies[0].volumes.mover.nodeSelector[\"bad key!\"]",
        "policies[0].volumes.mover.tolerations[0].operator",
        "policies[0].volumes.mover.tolerations[0].effect",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:#?}");
    }
    let timeout = set
        .problems
        .iter()
        .find(|p| p.path.ends_with("mover.timeout"))
        .unwrap();
    assert!(timeout.message.contains("units are required"), "{timeout}");
}

#[test]
fn given_repository_without_password_secret_when_validated_then_error_names_the_storage_field() {
    let text = MOVE_DATA.replace(
        "      passwordSecret: {name: freezeframe-repository, key: password}",
        "      pruneEvery: 0s",
    );
    let set = parse_str("shop.yaml", &text);
    let paths: Vec<&str> = set.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"storages.primary.repository"), "{paths:#?}");
    assert!(
        paths.contains(&"storages.primary.repository.pruneEvery"),
        "{paths:#?}"
    );
    let missing = set
        .problems
        .iter()
        .find(|p| p.path == "storages.primary.repository")
        .unwrap();
    assert!(missing.message.contains("passwordSecret"), "{missing}");
}

/// The issue's storage block for encryption and Object Lock, with field names as the contract shows.
fn storage_with(block: &str) -> String {
    minimal("").replace(
        "storages:\n  primary:\n    filesystem: {path: /b}\n",
        &format!("storages:\n  primary:\n{block}"),
    )
}

#[test]
fn given_encryption_and_object_lock_blocks_when_validated_then_they_are_resolved() {
    let recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let set = parse_str(
        "p.yaml",
        &storage_with(&format!(
            "    s3: {{bucket: b, objectLock: {{mode: GOVERNANCE, retainDays: 30}}}}\n\
             \x20   encryption:\n      recipients: [\"{recipient}\"]\n\
             \x20     identitySecret: {{name: freezeframe-identity, key: identities}}\n"
        )),
    );

    assert!(set.is_valid(), "{:#?}", set.problems);
    let storage = &set.policies[0].storage;
    let encryption = storage.encryption.as_ref().unwrap();
    assert_eq!(encryption.recipients, [recipient]);
    assert_eq!(
        encryption.identity_secret,
        Some(SecretKeyRef {
            name: "freezeframe-identity".into(),
            key: "identities".into()
        })
    );
    let Backend::S3(s3) = &storage.backend else {
        panic!("s3")
    };
    assert_eq!(
        s3.object_lock,
        Some(ObjectLock {
            mode: LockMode::Governance,
            retain_days: 30
        })
    );
}

#[test]
fn given_bad_recipient_and_lock_values_when_validated_then_each_is_reported_at_its_field() {
    let set = parse_str(
        "p.yaml",
        &storage_with(
            "    s3: {bucket: b, objectLock: {mode: FOREVER, retainDays: 0}}\n\
             \x20   encryption: {recipients: [\"ssh-ed25519 AAAA\"]}\n",
        ),
    );

    let paths: Vec<&str> = set.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"storages.primary.encryption.recipients[0]"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"storages.primary.s3.objectLock.mode"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"storages.primary.s3.objectLock.retainDays"),
        "{paths:?}"
    );
    assert!(
        set.problems
            .iter()
            .any(|p| p.message.contains("allowed: `GOVERNANCE`, `COMPLIANCE`")),
        "{:#?}",
        set.problems
    );
}

/// One policy with `dumps`, for the warning tests.
fn with_dumps(dumps: &str) -> String {
    format!(
        "apiVersion: freezeframe.dev/v1alpha1\nkind: PolicySet\n\
         storages: {{local: {{filesystem: {{path: /b}}}}}}\ndefaults: {{storage: local}}\n\
         policies:\n  - name: db\n    schedule: \"@daily\"\n    namespaces: [db]\n\
         \x20   retention: {{keepLast: 3}}\n    dumps:\n{dumps}"
    )
}

#[test]
fn given_frozen_mysqldump_without_single_transaction_when_validated_then_a_located_warning_not_a_problem() {
    let text = with_dumps(
        "      - name: all\n        podSelector: {app: mysql}\n        command: \"mysqldump --all-databases\"\n",
    );
    let set = parse_str("p.yaml", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    let [w] = &set.warnings[..] else {
        panic!("one warning: {:#?}", set.warnings)
    };
    let line = w.to_string();
    assert!(
        line.starts_with(
            "p.yaml:13:18: policy `db`: policies[0].dumps[0].command: warning: mysqldump while frozen"
        ),
        "{line}"
    );
    assert!(line.contains("--single-transaction --skip-lock-tables"), "{line}");

    for fine in [
        "command: \"mysqldump --single-transaction --skip-lock-tables --all-databases\"",
        "command: \"mysqldump --all-databases\"\n        whileFrozen: false",
    ] {
        let set = parse_str(
            "p.yaml",
            &with_dumps(&format!(
                "      - name: all\n        podSelector: {{app: mysql}}\n        {fine}\n"
            )),
        );
        assert!(
            set.is_valid() && set.warnings.is_empty(),
            "{fine}: {:#?}",
            set.warnings
        );
    }
}

#[test]
fn given_replay_without_run_in_single_pod_or_pg_dumpall_with_on_error_stop_when_validated_then_warned() {
    let text = with_dumps(
        "      - name: pg\n        podSelector: {app: pg}\n        command: \"pg_dumpall\"\n\
         \x20       restoreCommand: \"psql -v ON_ERROR_STOP=1\"\n",
    );
    let set = parse_str("p.yaml", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    let messages: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("dumps[0].restoreCommand: warning: without `runInSinglePod: true`"));
    assert!(
        messages[1].contains("ON_ERROR_STOP the replay stops"),
        "{}",
        messages[1]
    );

    let fine = with_dumps(
        "      - name: pg\n        podSelector: {app: pg}\n        command: \"pg_dumpall\"\n\
         \x20       restoreCommand: \"psql\"\n        runInSinglePod: true\n",
    );
    assert!(parse_str("p.yaml", &fine).warnings.is_empty());
}

#[test]
fn given_max_freeze_when_parsed_then_default_is_60s_custom_values_apply_and_0s_is_rejected() {
    let default = parse_str("t", &minimal(""));
    assert!(default.is_valid(), "{:#?}", default.problems);
    assert_eq!(default.policies[0].max_freeze, DEFAULT_MAX_FREEZE);
    assert_eq!(DEFAULT_MAX_FREEZE, std::time::Duration::from_secs(60));

    let custom = parse_str("t", &minimal("    rules: {maxFreeze: 2m30s}\n"));
    assert!(custom.is_valid(), "{:#?}", custom.problems);
    assert_eq!(custom.policies[0].max_freeze, std::time::Duration::from_secs(150));

    let zero = parse_str("t", &minimal("    rules: {maxFreeze: 0s}\n"));
    let problem = only_problem(&zero);
    assert_eq!(problem.path, "policies[0].rules.maxFreeze");
    assert!(problem.message.contains("positive duration"), "{problem:?}");

    let unitless = parse_str("t", &minimal("    rules: {maxFreeze: 60}\n"));
    assert_eq!(only_problem(&unitless).path, "policies[0].rules.maxFreeze");
}

#[test]
fn given_pre_action_timeout_beyond_max_freeze_when_validated_then_warned_naming_both() {
    let set = parse_str(
        "t",
        &minimal(
            "    rules:\n      maxFreeze: 30s\n      pre:\n        - podSelector: {app: x}\n          \
             actions: [{value: sync, timeout: 10s}, {value: lock, timeout: 90s}]\n",
        ),
    );
    assert!(set.is_valid(), "{:#?}", set.problems);
    assert_eq!(set.warnings.len(), 1, "{:#?}", set.warnings);
    let w = &set.warnings[0];
    assert_eq!(w.path, "policies[0].rules.pre[0].actions[1].timeout");
    assert!(
        w.message.contains("(1m30s)") && w.message.contains("maxFreeze (30s)"),
        "{w:?}"
    );
}
