//! The recipes in `policies/` against real database servers (see [`crate::harness::databases`]):
//! backup → drop → restore through the sandbox, with counts and checksums compared.

use std::time::Duration;

use freezeframe::backup::DumpStatus;
use freezeframe::exit::Outcome;
use freezeframe::restore::dumps::ReplayStatus;
use freezeframe::store::Layout;
use freezeframe::store::fs::FsStore;

use crate::harness::TestEnv;
use crate::harness::databases::{Postgres, Redis};
use crate::restore::{options, restore_with};

/// `policies/postgresql.yaml` pointed at `pg` (its commands name no host: in a real pod the server is
/// local) and at the sandbox's `db` namespace.
fn postgres_policy(pg: &Postgres) -> freezeframe::policy::Policy {
    let text = include_str!("../policies/postgresql.yaml")
        .replace("psql -U postgres", &pg.psql_prefix())
        .replace(
            "pg_dumpall -U postgres",
            &format!("pg_dumpall -h 127.0.0.1 -p {} -U postgres", pg.port()),
        )
        .replace(
            "[psql, -U, postgres,",
            &format!("[psql, -h, 127.0.0.1, -p, \"{}\", -U, postgres,", pg.port()),
        );
    let set = freezeframe::policy::parse_str("postgresql.yaml", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    set.policies.into_iter().next().unwrap()
}

const STATEFULSET: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n---\n\
    apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: postgres, namespace: db}\n\
    spec:\n  replicas: 1\n  serviceName: postgres\n  selector: {matchLabels: {app: postgres}}\n\
    \x20 template:\n    metadata: {labels: {app: postgres}}\n\
    \x20   spec: {containers: [{name: postgres, image: postgres:15}]}\n";

/// Rows and an order-independent checksum of table `orders` in database `shop`.
fn fingerprint(pg: &Postgres) -> anyhow::Result<String> {
    pg.query(
        "shop",
        "SELECT count(*) || ' ' || md5(string_agg(id || ':' || item, ',' ORDER BY id)) FROM orders",
    )
}

#[tokio::test]
async fn given_real_postgresql_when_backed_up_dropped_and_restored_with_the_recipe_then_every_row_is_back()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    pg.query("postgres", "CREATE DATABASE shop")?;
    pg.query(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL); \
         INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 10000) i",
    )?;
    let before = fingerprint(&pg)?;
    assert!(before.starts_with("10000 "), "{before}");

    let env = TestEnv::new().await?;
    env.apply(STATEFULSET)?;
    let policy = postgres_policy(&pg);
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let manifest = env.back_up(&policy, &store, &layout, chrono::Utc::now()).await?;
    let [dump] = &manifest.dumps[..] else {
        panic!("one dump: {:?} {:?}", manifest.dumps, manifest.problems)
    };
    assert_eq!(dump.status, DumpStatus::Succeeded, "{dump:?}");

    // Disaster: the data and the namespace are gone.
    pg.query("postgres", "DROP DATABASE shop")?;
    env.delete_namespace_and_wait("db").await?;

    let mut opts = options();
    opts.wait = Some(Duration::from_secs(60));
    let (_, report) = restore_with(&env.client(), &store, &layout, &opts, Some(&policy)).await?;
    assert_eq!(report.outcome(), Outcome::Success, "{}", report.table());
    let [replay] = &report.dumps[..] else {
        panic!("one replay: {:?}", report.dumps)
    };
    assert_eq!(replay.status, ReplayStatus::Succeeded, "{replay:?}");
    assert_eq!(replay.exit_code, Some(0), "{replay:?}");
    assert_eq!(fingerprint(&pg)?, before);
    Ok(())
}

/// `policies/redis.yaml` pointed at `redis` and at the sandbox's `cache` namespace.
fn redis_policy(redis: &Redis) -> freezeframe::policy::Policy {
    let text = include_str!("../policies/redis.yaml").replace(
        "redis-cli",
        &format!("redis-cli -h 127.0.0.1 -p {}", redis.port()),
    );
    let set = freezeframe::policy::parse_str("redis.yaml", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    set.policies.into_iter().next().unwrap()
}

#[tokio::test]
async fn given_real_redis_when_its_rdb_dump_is_restored_then_key_count_and_digest_are_equal()
-> anyhow::Result<()> {
    let redis = Redis::start()?;
    redis.cli(&["DEBUG", "POPULATE", "200000", "key", "32"])?;
    redis.cli(&["SET", "greeting", "hello"])?;
    redis.cli(&["HSET", "cart:1", "apples", "3", "pears", "2"])?;
    let keys = redis.cli(&["DBSIZE"])?;
    assert_eq!(keys, "200002");
    let digest = redis.cli(&["DEBUG", "DIGEST"])?;

    let env = TestEnv::new().await?;
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: cache}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: redis, namespace: cache}\n\
         spec:\n  replicas: 1\n  serviceName: redis\n  selector: {matchLabels: {app: redis}}\n\
         \x20 template:\n    metadata: {labels: {app: redis}}\n\
         \x20   spec: {containers: [{name: redis, image: redis:7}]}\n",
    )?;
    let policy = redis_policy(&redis);
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");
    let manifest = env.back_up(&policy, &store, &layout, chrono::Utc::now()).await?;
    assert_eq!(
        manifest.status,
        freezeframe::backup::Status::Completed,
        "{:?}",
        manifest.problems
    );
    let [dump] = &manifest.dumps[..] else {
        panic!("one dump: {:?}", manifest.dumps)
    };
    assert_eq!(dump.status, DumpStatus::Succeeded, "{dump:?}");
    let id = freezeframe::store::BackupId::parse(&manifest.backup_id).unwrap();
    let key = layout.backup(&policy.name, &id).dump("rdb", "cache", "redis-0");
    let rdb = std::fs::read(env.dir().join("store").join(key))?;
    assert_eq!(Some(rdb.len() as u64), dump.size);

    // Disaster: every key is gone; the RDB file is put in place and the server started on it.
    redis.cli(&["FLUSHALL"])?;
    let restored = redis.restart_from(&rdb)?;
    assert_eq!(restored.cli(&["DBSIZE"])?, keys);
    assert_eq!(restored.cli(&["DEBUG", "DIGEST"])?, digest);
    Ok(())
}
