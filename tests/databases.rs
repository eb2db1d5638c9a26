//! The recipes in `policies/` against real database servers (see [`crate::harness::databases`]):
//! backup → drop → restore through the sandbox, with counts and checksums compared.

use std::time::Duration;

use freezeframe::backup::DumpStatus;
use freezeframe::exit::Outcome;
use freezeframe::restore::dumps::ReplayStatus;
use freezeframe::store::Layout;
use freezeframe::store::fs::FsStore;

use crate::harness::TestEnv;
use crate::harness::databases::{Mariadb, Postgres, Redis};
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

/// `policies/mysql.yaml` pointed at `db` (its commands name no host and read the password from the
/// container's environment: in a real pod the server is local), plus the test's probe: a second frozen
/// dump that touches `marker` once the lock is held and keeps the freeze open for 4 s, so that a write
/// can be tried inside the freeze.
fn mysql_policy(db: &Mariadb, marker: &std::path::Path) -> freezeframe::policy::Policy {
    let options = db.client_options();
    let probe = format!(
        "          - name: freeze-probe\n\
         \x20           podSelector: {{app.kubernetes.io/instance: orders}}\n\
         \x20           container: mysql\n\
         \x20           command: \"touch {}; sleep 4\"\n",
        marker.display()
    );
    let text = include_str!("../policies/mysql.yaml")
        .replace(
            r#"mysql -uroot -p"$MYSQL_ROOT_PASSWORD""#,
            &format!("mysql {options}"),
        )
        .replace(
            r#"mysqldump -uroot -p"$MYSQL_ROOT_PASSWORD""#,
            &format!("mysqldump {options}"),
        )
        .replace(
            "          - name: all-databases\n",
            &format!("{probe}          - name: all-databases\n"),
        );
    assert!(
        text.contains("freeze-probe") && !text.contains("MYSQL_ROOT_PASSWORD"),
        "{text}"
    );
    let set = freezeframe::policy::parse_str("mysql.yaml", &text);
    assert!(set.is_valid(), "{:#?}", set.problems);
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    set.policies.into_iter().next().unwrap()
}

/// Rows, an order-independent sum of row checksums, and `CHECKSUM TABLE` of `shop.orders`.
fn mariadb_fingerprint(db: &Mariadb) -> anyhow::Result<String> {
    let rows = db.query("SELECT COUNT(*), SUM(CRC32(CONCAT(id, ':', item))) FROM shop.orders")?;
    let checksum = db.query("CHECKSUM TABLE shop.orders")?;
    Ok(format!("{rows} {checksum}"))
}

#[tokio::test]
async fn given_real_mariadb_when_backed_up_with_the_recipe_then_writes_wait_for_the_thaw_and_every_row_comes_back()
-> anyhow::Result<()> {
    let db = Mariadb::start()?;
    db.query(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(64) NOT NULL) ENGINE=InnoDB; \
         USE shop; INSERT INTO orders SELECT seq, MD5(seq) FROM seq_1_to_5000",
    )?;
    let before = mariadb_fingerprint(&db)?;
    assert!(before.starts_with("5000\t"), "{before}");

    let env = TestEnv::new().await?;
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: orders-mysql, namespace: shop}\n\
         spec:\n  replicas: 1\n  serviceName: orders-mysql\n\
         \x20 selector: {matchLabels: {app.kubernetes.io/instance: orders}}\n\
         \x20 template:\n    metadata: {labels: {app.kubernetes.io/name: mysql, app.kubernetes.io/instance: orders}}\n\
         \x20   spec: {containers: [{name: mysql, image: mariadb:10.11}]}\n",
    )?;
    let marker = env.dir().join("frozen");
    let policy = mysql_policy(&db, &marker);
    let store = FsStore::new(env.dir().join("store"));
    let layout = Layout::new("");

    // Another session writes once the freeze holds: its INSERT must wait for the thaw.
    let writer = async {
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = tokio::time::Instant::now();
        let out = db
            .command("INSERT INTO shop.orders VALUES (5001, 'written during the freeze')")
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        anyhow::Ok(started.elapsed())
    };
    let (manifest, blocked_for) = tokio::join!(
        env.back_up(&policy, &store, &layout, chrono::Utc::now()),
        tokio::time::timeout(Duration::from_secs(120), writer)
    );
    let manifest = manifest?;
    let blocked_for = blocked_for??;
    assert_eq!(
        manifest.status,
        freezeframe::backup::Status::Completed,
        "{:?}",
        manifest.problems
    );
    let window = manifest
        .hooks
        .as_ref()
        .and_then(|h| h.freeze_window_millis)
        .unwrap();
    // The probe keeps the freeze open ~4 s after the marker: the INSERT waited for (about) that, and
    // went through as soon as the lock was released.
    assert!(
        blocked_for >= Duration::from_secs(2) && blocked_for < Duration::from_millis(window),
        "the INSERT waited {blocked_for:?}; the freeze lasted {window} ms"
    );
    // After the thaw nothing blocks writes.
    let started = std::time::Instant::now();
    db.query("INSERT INTO shop.orders VALUES (5002, 'written after the thaw')")?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let dump = manifest
        .dumps
        .iter()
        .find(|d| d.name == "all-databases")
        .expect("the recipe's dump");
    assert_eq!(dump.status, DumpStatus::Succeeded, "{dump:?}");
    assert!(dump.while_frozen);

    // Disaster: the database and the namespace are gone.
    db.query("DROP DATABASE shop")?;
    env.delete_namespace_and_wait("shop").await?;

    let mut opts = options();
    opts.wait = Some(Duration::from_secs(60));
    let (_, report) = restore_with(&env.client(), &store, &layout, &opts, Some(&policy)).await?;
    let replay = report
        .dumps
        .iter()
        .find(|r| r.dump == "all-databases")
        .expect("the recipe's replay");
    assert_eq!(replay.status, ReplayStatus::Succeeded, "{replay:?}");
    assert_eq!(replay.exit_code, Some(0), "{replay:?}");
    // Every row of the backup, none of the writes that waited for the thaw.
    assert_eq!(mariadb_fingerprint(&db)?, before);
    Ok(())
}
