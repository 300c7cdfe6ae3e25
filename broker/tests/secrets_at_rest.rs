//! Secrets at rest (issue 17): every file the broker keeps keys or the ledger in is 0600 in a 0700
//! directory from creation, the broker refuses to start (exit 78, naming the path and the fix) when others
//! can get at one, and store-held signing keys are sealed with a key-encryption key so that a copy of the
//! database alone mints nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tollgate_broker::config::{Config, Source, StoreConfig, StoreKind};
use tollgate_broker::governance::keys::KeyManager;
use tollgate_broker::governance::store::{self, Store};
use tollgate_broker::keys::{KeyEncryptionKey, is_sealed};
use tollgate_broker::token::KeyRing;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn config_in(dir: &Path, extra: &str, env: &BTreeMap<String, String>) -> Result<Config, String> {
    std::fs::write(dir.join("policy.toml"), "").expect("policy");
    let text = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\n[tokens]\naudience = \"tollgate\"\n{extra}"
    );
    std::fs::write(dir.join("broker.toml"), &text).expect("config file");
    Config::from_source(
        Source {
            path: dir.join("broker.toml"),
            text,
        },
        env,
    )
    .map_err(|e| e.to_string())
}

/// A state directory that already exists with 0755 (made by hand, an image, a volume): the broker
/// tightens it to 0700, and the store, the audit trail and their -wal/-shm files are 0600 from creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_from_creation_in_a_loose_state_dir() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    chmod(&state, 0o755);
    let config = config_in(dir.path(), "", &BTreeMap::new()).expect("config");
    config.check_state_files().expect("preflight");
    let clock = tollgate_broker::clock::FakeClock::new(1_800_000_000);
    let app = tollgate_broker::app::AppState::build(&config, Arc::new(clock))
        .await
        .expect("state");
    let audit = app.audit().as_ref().expect("audit on by default");
    audit.record(tollgate_broker::audit::AuditEvent {
        ts: 1_800_000_000,
        kind: Some(tollgate_broker::audit::EventKind::Admin),
        actor: "test".into(),
        detail: serde_json::json!({}),
        ..Default::default()
    });
    audit.flush().await;
    assert_eq!(mode(&state), 0o700, "state directory tightened");
    for name in [
        "governance.db",
        "governance.db-wal",
        "governance.db-shm",
        "audit.sqlite",
        "audit.sqlite-wal",
        "audit.sqlite-shm",
    ] {
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }
}

async fn run_broker(config: &Path) -> (Option<i32>, String) {
    let (status, stderr) =
        tollgate_testkit::procs::BrokerCmd::new(env!("CARGO_BIN_EXE_tollgate-broker"), config)
            .run_to_exit(Duration::from_secs(30))
            .await
            .expect("the broker must refuse at once, not serve");
    (status.code(), stderr)
}

/// A store file, its WAL, or the key file readable by others: exit 78 with the path and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_to_start_when_a_key_bearing_file_is_readable_by_others() {
    for (file, m) in [("governance.db", 0o644), ("governance.db-wal", 0o640)] {
        let dir = tempfile::tempdir().expect("tmp");
        config_in(dir.path(), "", &BTreeMap::new()).expect("config");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        chmod(&state, 0o700);
        let path = state.join(file);
        std::fs::write(&path, b"").expect("file");
        chmod(&path, m);
        let (code, stderr) = run_broker(&dir.path().join("broker.toml")).await;
        assert_eq!(code, Some(78), "{file}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string())
                && stderr.contains(&format!("chmod 600 {}", path.display()))
                && stderr.contains("signing keys"),
            "{file}: the message names the file and the fix: {stderr}"
        );
    }

    // The operator's key file.
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("signing.pem");
    let (_, der) = tollgate_broker::keys::SigningKey::generate(1).expect("key");
    std::fs::write(&key, tollgate_broker::keys::to_pem(&der)).expect("pem");
    chmod(&key, 0o644);
    config_in(
        dir.path(),
        "signing_key_file = \"signing.pem\"\n",
        &BTreeMap::new(),
    )
    .expect("config");
    let (code, stderr) = run_broker(&dir.path().join("broker.toml")).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("tokens.signing_key_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

fn kek(byte: u8) -> Arc<KeyEncryptionKey> {
    Arc::new(KeyEncryptionKey::from_bytes(&[byte; 32]).expect("kek"))
}

async fn open_sqlite(path: &Path) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Sqlite,
        sqlite_path: path.to_path_buf(),
        url: None,
        schema: None,
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("open")
}

async fn open_pg(schema: &str) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Postgres,
        sqlite_path: "unused".into(),
        url: Some(PG_URL.to_string().into()),
        schema: Some(schema.to_string()),
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 2,
    })
    .await
    .expect("open pg")
}

async fn stored(st: &dyn Store) -> Vec<(String, Vec<u8>)> {
    let mut rows: Vec<(String, Vec<u8>)> = st
        .keys_since(i64::MIN)
        .await
        .expect("keys")
        .into_iter()
        .chain(st.rotated_keys_since(i64::MIN).await.expect("rotated"))
        .map(|k| (k.kid, k.pkcs8))
        .collect();
    rows.sort();
    rows
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Keys written in the clear (no KEK yet) are sealed in place when a KEK is configured; new keys are
/// written sealed; a replica without the KEK, or with another one, refuses to start with a message saying
/// so. On SQLite, the clear-text bytes are gone from the database file and its WAL afterwards.
async fn sealing(st: Arc<dyn Store>, files: &[std::path::PathBuf]) {
    let (plain_km, ring) = (KeyManager::new(100, 150), KeyRing::default());
    // Keys of long-past generations (no longer loaded, kept for old audit checkpoints) and current ones.
    for now in [50, 1_050] {
        plain_km.sync(st.as_ref(), &ring, now).await.expect("sync");
    }
    let clear = stored(st.as_ref()).await;
    assert_eq!(clear.len(), 4);
    assert!(clear.iter().all(|(_, b)| !is_sealed(b)));
    let signer = ring.active_at(1_050).expect("signs").kid.clone();

    let km = KeyManager::new(100, 150).with_kek(Some(kek(7)));
    let ring = KeyRing::default();
    km.sync(st.as_ref(), &ring, 1_050)
        .await
        .expect("sync, sealing");
    let sealed = stored(st.as_ref()).await;
    assert_eq!(
        sealed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        clear.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "the same keys"
    );
    assert!(sealed.iter().all(|(_, b)| is_sealed(b)), "sealed in place");
    assert_eq!(
        ring.active_at(1_050).expect("signs").kid,
        signer,
        "and still usable"
    );
    for f in files {
        let bytes = std::fs::read(f).unwrap_or_default();
        for (kid, der) in &clear {
            // The private scalar sits inside the DER; any 48-byte stretch of it must be gone.
            assert!(
                !contains(&bytes, &der[20..68]),
                "clear-text key {kid} still in {}",
                f.display()
            );
        }
    }

    // A new generation's key is written sealed.
    km.sync(st.as_ref(), &ring, 1_250)
        .await
        .expect("sync later");
    let later = stored(st.as_ref()).await;
    assert!(later.len() > 2);
    assert!(later.iter().all(|(_, b)| is_sealed(b)));

    let e = KeyManager::new(100, 150)
        .sync(st.as_ref(), &KeyRing::default(), 1_250)
        .await
        .expect_err("no KEK");
    assert!(
        e.to_string().contains("sealed with key-encryption key")
            && e.to_string().contains("key_encryption_key_file"),
        "{e}"
    );
    let e = KeyManager::new(100, 150)
        .with_kek(Some(kek(8)))
        .sync(st.as_ref(), &KeyRing::default(), 1_250)
        .await
        .expect_err("another KEK");
    assert!(
        e.to_string().contains("every replica needs the same"),
        "{e}"
    );
}

#[tokio::test]
async fn signing_keys_are_sealed_at_rest_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("g.db");
    let st = open_sqlite(&db).await;
    let wal = dir.path().join("g.db-wal");
    sealing(st, &[db, wal]).await;
}

#[tokio::test]
async fn signing_keys_are_sealed_at_rest_postgres() {
    let schema = format!("seal_{}", uuid::Uuid::new_v4().simple());
    let st = open_pg(&schema).await;
    sealing(st.clone(), &[]).await;
    if let store::StorePool::Postgres(p) = st.pool() {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&p).await;
    }
}

/// The KEK's configuration: from a variable (base64 or hex) or a private file, never both; a missing
/// variable, a wrong length and a file others can read are config errors naming the field.
#[test]
fn key_encryption_key_configuration() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut env = BTreeMap::new();
    let e =
        config_in(dir.path(), "key_encryption_key_env = \"TG_KEK\"\n", &env).expect_err("unset");
    assert!(
        e.contains("tokens.key_encryption_key_env") && e.contains("TG_KEK"),
        "{e}"
    );
    env.insert("TG_KEK".to_string(), "c2hvcnQ=".to_string());
    let e =
        config_in(dir.path(), "key_encryption_key_env = \"TG_KEK\"\n", &env).expect_err("short");
    assert!(e.contains("32 bytes"), "{e}");
    env.insert("TG_KEK".to_string(), "ab".repeat(32));
    let c = config_in(dir.path(), "key_encryption_key_env = \"TG_KEK\"\n", &env).expect("hex");
    let hex_kek = c.tokens.key_encryption_key.expect("kek");
    use base64::Engine;
    env.insert(
        "TG_KEK".to_string(),
        base64::engine::general_purpose::STANDARD.encode([0xab; 32]),
    );
    let c = config_in(dir.path(), "key_encryption_key_env = \"TG_KEK\"\n", &env).expect("b64");
    assert_eq!(
        c.tokens.key_encryption_key.expect("kek").id(),
        hex_kek.id(),
        "hex and base64 of the same bytes"
    );
    assert!(
        !format!("{hex_kek:?}").contains("abab"),
        "Debug shows no key material"
    );

    let file = dir.path().join("kek");
    std::fs::write(&file, "ab".repeat(32)).expect("kek file");
    chmod(&file, 0o644);
    let e = config_in(dir.path(), "key_encryption_key_file = \"kek\"\n", &env)
        .expect_err("readable by others");
    assert!(
        e.contains("chmod 600") && e.contains("key_encryption_key_file"),
        "{e}"
    );
    chmod(&file, 0o600);
    config_in(dir.path(), "key_encryption_key_file = \"kek\"\n", &env).expect("private file");
    let e = config_in(
        dir.path(),
        "key_encryption_key_file = \"kek\"\nkey_encryption_key_env = \"TG_KEK\"\n",
        &env,
    )
    .expect_err("both");
    assert!(e.contains("not both"), "{e}");
}
