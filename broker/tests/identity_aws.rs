//! AWS IAM identities against moto with SigV4 enforcement: signed `sts:GetCallerIdentity` proofs made
//! with the same signer the helper uses, replayed by the broker; a grant, then a proxied request; and
//! every refusal the issue lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use support::{Broker, Peer};
use tollgate::aws::{
    AwsCredentials, SERVER_ID_HEADER, SignOptions, SignedCallerIdentity, sign_get_caller_identity,
};
use tollgate::exchange::TOKEN_TYPE_AWS_SIGV4;

const SERVER_ID: &str = "tollgate-test";

const POLICY: &str = r#"
[[rule]]
name = "builders"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:user/*", attributes = { account = "123456789012" } }
principal = "aws-user:{attr.user}"
team = "{attr.account}"
models = ["*"]

[[rule]]
name = "workloads"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:role/workload" }
principal = "aws-role:{attr.role}/{attr.session}"
models = ["gpt-5*"]
"#;

struct Aws {
    moto: Peer,
    user: AwsCredentials,
    role: AwsCredentials,
}

/// moto enforcing SigV4 after a few bootstrap calls (create user, key, policy); then AssumeRole, signed;
/// then unauthenticated calls until moto refuses one, so every later request is really verified.
fn setup_moto() -> Aws {
    let moto = support::start_moto(5);
    let v = support::venv_python(
        r#"
import boto3, json, os
url = os.environ["MOTO_URL"]
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="builder")
key = iam.create_access_key(UserName="builder")["AccessKey"]
iam.put_user_policy(UserName="builder", PolicyName="sts", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}]}))
sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
role = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/workload", RoleSessionName="sess1")["Credentials"]
bogus = boto3.client("sts", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIABOGUS", aws_secret_access_key="bogus")
for _ in range(10):
    try:
        bogus.get_caller_identity()
    except Exception:
        break
else:
    raise SystemExit("moto never started enforcing SigV4")
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"], "rak": role["AccessKeyId"], "rsk": role["SecretAccessKey"], "rst": role["SessionToken"]}))
"#,
        &[("MOTO_URL", moto.base_url.as_str())],
    );
    let s = |k: &str| v[k].as_str().expect(k).to_string();
    Aws {
        user: AwsCredentials {
            access_key_id: s("ak"),
            secret_access_key: s("sk"),
            session_token: None,
        },
        role: AwsCredentials {
            access_key_id: s("rak"),
            secret_access_key: s("rsk"),
            session_token: Some(s("rst")),
        },
        moto,
    }
}

async fn broker(moto_url: &str) -> Broker {
    Broker::new(
        &format!(
            "[identity.aws]\nserver_id = \"{SERVER_ID}\"\nendpoints = [{{ region = \"us-east-1\", url = \"{moto_url}\" }}]\n"
        ),
        POLICY,
    ).await
}

fn sign(
    creds: &AwsCredentials,
    region: &str,
    url: &str,
    server_id: Option<&str>,
    extra: &[(&str, &str)],
    time: SystemTime,
) -> SignedCallerIdentity {
    sign_get_caller_identity(
        creds,
        region,
        url,
        &SignOptions {
            server_id,
            extra_headers: extra,
            time,
        },
    )
    .expect("sign")
}

fn url(peer_base: &str) -> String {
    format!("{peer_base}/")
}

#[tokio::test]
async fn iam_user_and_assumed_role_get_grants_and_proxied_answers() {
    let aws = setup_moto();
    let b = broker(&aws.moto.base_url).await;
    let now = SystemTime::now();
    let proof = sign(
        &aws.user,
        "us-east-1",
        &url(&aws.moto.base_url),
        Some(SERVER_ID),
        &[],
        now,
    );
    let claims = b
        .grant_and_proxy(TOKEN_TYPE_AWS_SIGV4, &proof.encode())
        .await;
    assert_eq!(claims["sub"], "aws-user:builder");
    assert_eq!(claims["tollgate"]["team"], "123456789012");
    assert_eq!(
        claims["tollgate"]["identity"]["subject"],
        "arn:aws:iam::123456789012:user/builder"
    );
    assert_eq!(claims["tollgate"]["identity"]["issuer"], aws.moto.base_url);

    // Assumed role: canonicalised to the role, the session kept for the principal name.
    let proof = sign(
        &aws.role,
        "us-east-1",
        &url(&aws.moto.base_url),
        Some(SERVER_ID),
        &[],
        now,
    );
    assert!(proof.header("x-amz-security-token").is_some());
    let claims = b
        .grant_and_proxy(TOKEN_TYPE_AWS_SIGV4, &proof.encode())
        .await;
    assert_eq!(claims["sub"], "aws-role:workload/sess1");
    assert_eq!(
        claims["tollgate"]["identity"]["subject"],
        "arn:aws:iam::123456789012:role/workload"
    );

    // Ten minutes old is inside the ±15 min window.
    let proof = sign(
        &aws.user,
        "us-east-1",
        &url(&aws.moto.base_url),
        Some(SERVER_ID),
        &[],
        now - Duration::from_secs(600),
    );
    b.grant_and_proxy(TOKEN_TYPE_AWS_SIGV4, &proof.encode())
        .await;
}

/// A loopback listener that counts connections: a proof pointing here must never make the broker call.
async fn trap() -> (String, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn bad_aws_proofs_are_refused_without_detail() {
    let aws = setup_moto();
    let b = broker(&aws.moto.base_url).await;
    let moto = url(&aws.moto.base_url);
    let now = SystemTime::now();
    let t = TOKEN_TYPE_AWS_SIGV4;

    let other_sid = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some("another-broker"),
        &[],
        now,
    );
    b.expect_refused_because(
        "another server ID",
        "server_id_mismatch",
        t,
        &other_sid.encode(),
    )
    .await;

    let mut unsigned_sid = sign(&aws.user, "us-east-1", &moto, None, &[], now);
    unsigned_sid
        .headers
        .insert(SERVER_ID_HEADER.into(), vec![SERVER_ID.into()]);
    b.expect_refused_because(
        "server ID not signed",
        "server_id_unsigned",
        t,
        &unsigned_sid.encode(),
    )
    .await;

    let no_sid = sign(&aws.user, "us-east-1", &moto, None, &[], now);
    b.expect_refused_because("no server ID", "server_id_missing", t, &no_sid.encode())
        .await;

    let stale = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some(SERVER_ID),
        &[],
        now - Duration::from_secs(16 * 60),
    );
    b.expect_refused_because("X-Amz-Date 16 min old", "stale_date", t, &stale.encode())
        .await;
    let future = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some(SERVER_ID),
        &[],
        now + Duration::from_secs(16 * 60),
    );
    b.expect_refused_because("X-Amz-Date 16 min ahead", "stale_date", t, &future.encode())
        .await;

    let extra = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some(SERVER_ID),
        &[("x-amz-foo", "bar")],
        now,
    );
    b.expect_refused_because(
        "extra X-Amz-* header",
        "header_not_allowed",
        t,
        &extra.encode(),
    )
    .await;

    let mut tampered = sign(&aws.user, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    tampered.body = "Action=GetCallerIdentity&Version=2011-06-15&Foo=1".into();
    b.expect_refused_because(
        "other body",
        "not_get_caller_identity",
        t,
        &tampered.encode(),
    )
    .await;

    let mut query = sign(&aws.user, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    query.url = format!("{moto}?Action=GetCallerIdentity");
    b.expect_refused_because("query string", "bad_url", t, &query.encode())
        .await;

    // Bad signatures: moto (enforcing SigV4) rejects them; the broker says only invalid_grant.
    let wrong_secret = AwsCredentials {
        access_key_id: aws.user.access_key_id.clone(),
        secret_access_key: "not-the-secret".into(),
        session_token: None,
    };
    let bad = sign(&wrong_secret, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    b.expect_refused_because("bad signature", "sts_rejected", t, &bad.encode())
        .await;
    let unknown_key = AwsCredentials {
        access_key_id: "AKIAUNKNOWNKEY000000".into(),
        secret_access_key: "x".into(),
        session_token: None,
    };
    let bad = sign(&unknown_key, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    b.expect_refused_because("unknown access key", "sts_rejected", t, &bad.encode())
        .await;
    let mut no_token = sign(&aws.role, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    no_token
        .headers
        .retain(|k, _| !k.eq_ignore_ascii_case("x-amz-security-token"));
    b.expect_refused_because(
        "signed session token dropped",
        "bad_authorization",
        t,
        &no_token.encode(),
    )
    .await;

    // A proof pointing anywhere but the allow-listed endpoint never makes the broker connect there.
    let (trap_url, hits) = trap().await;
    let elsewhere = sign(
        &aws.user,
        "us-east-1",
        &url(&trap_url),
        Some(SERVER_ID),
        &[],
        now,
    );
    b.expect_refused_because(
        "URL of a non-STS host",
        "endpoint_not_allowed",
        t,
        &elsewhere.encode(),
    )
    .await;
    let other_region = sign(
        &aws.user,
        "eu-west-1",
        &url(&trap_url),
        Some(SERVER_ID),
        &[],
        now,
    );
    b.expect_refused_because(
        "region not allow-listed",
        "endpoint_not_allowed",
        t,
        &other_region.encode(),
    )
    .await;
    let mut host_header = sign(&aws.user, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    host_header.headers.insert(
        "Host".into(),
        vec![trap_url.trim_start_matches("http://").to_string()],
    );
    b.expect_refused_because(
        "Host header of another host",
        "endpoint_not_allowed",
        t,
        &host_header.encode(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the broker contacted a non-STS host"
    );

    // Replay: the first use is fine, the second is refused.
    let once = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some(SERVER_ID),
        &[],
        now - Duration::from_secs(1),
    );
    b.grant_and_proxy(t, &once.encode()).await;
    b.expect_refused_because("replayed signature", "replayed", t, &once.encode())
        .await;

    // The broker's clock, not the client's, decides freshness.
    let fresh = sign(
        &aws.user,
        "us-east-1",
        &moto,
        Some(SERVER_ID),
        &[],
        now - Duration::from_secs(2),
    );
    b.clock.advance(20 * 60);
    b.expect_refused_because(
        "fresh proof, broker clock 20 min later",
        "stale_date",
        t,
        &fresh.encode(),
    )
    .await;

    let mut crlf = sign(&aws.user, "us-east-1", &moto, Some(SERVER_ID), &[], now);
    crlf.headers.insert(
        "Content-Type".into(),
        vec!["text/plain\r\nX-Evil: 1".into()],
    );
    crlf.headers.remove("content-type");
    b.expect_refused_because(
        "CR/LF in a header value",
        "malformed_proof",
        t,
        &crlf.encode(),
    )
    .await;

    // Garbage.
    b.expect_refused_because("not base64", "malformed_proof", t, "%%%")
        .await;
    b.expect_refused_because("not the document", "malformed_proof", t, "e30")
        .await;
}

/// A unique PostgreSQL schema for one test (the store creates and migrates it).
fn pg_store_toml(schema: &str) -> String {
    format!(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\nschema = \"{schema}\"\n"
    )
}

async fn drop_pg_schema(schema: &str) {
    use sqlx::Executor;
    if let Ok(pool) = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await {
        let _ = pool
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .await;
        pool.close().await;
    }
}

/// A proof signed now with a nonce of its own (as the helper does), so two proofs made in the same
/// second differ.
fn unique(creds: &AwsCredentials, moto: &str, nonce: &str) -> SignedCallerIdentity {
    sign(
        creds,
        "us-east-1",
        moto,
        Some(SERVER_ID),
        &[(tollgate::aws::NONCE_HEADER, nonce)],
        SystemTime::now(),
    )
}

/// Two replicas behind a load balancer share the governance store, and with it the replay guard: a
/// signed request one replica accepted is refused by the other. With the store unreachable, the replay
/// check cannot be made, and the exchange is refused (`temporarily_unavailable`), never waved through.
#[tokio::test]
async fn a_signature_is_accepted_once_across_replicas_sharing_postgres() {
    let aws = setup_moto();
    let schema = format!(
        "replay_{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("time")
            .subsec_nanos()
    );
    let identity = format!(
        "[identity.aws]\nserver_id = \"{SERVER_ID}\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n\n{}",
        aws.moto.base_url,
        pg_store_toml(&schema)
    );
    let a = Broker::new(&identity, POLICY).await;
    let b = Broker::new(&identity, POLICY).await;
    let moto = url(&aws.moto.base_url);
    let t = TOKEN_TYPE_AWS_SIGV4;

    let once = unique(&aws.user, &moto, "once");
    a.grant_and_proxy(t, &once.encode()).await;
    b.expect_refused_because("replayed on another replica", "replayed", t, &once.encode())
        .await;
    a.expect_refused_because(
        "replayed on the same replica",
        "replayed",
        t,
        &once.encode(),
    )
    .await;

    // Concurrent first uses of one signature on both replicas: exactly one wins.
    let twice = unique(&aws.user, &moto, "twice");
    let enc = twice.encode();
    let (ra, rb) = tokio::join!(a.exchange(t, &enc), b.exchange(t, &enc));
    let ok = [ra.0, rb.0]
        .iter()
        .filter(|s| **s == http::StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "exactly one replica accepts: {ra:?} {rb:?}");

    // A proof STS refused (bad signature) is not spent: the claim is given back, so it is refused for
    // what it is on the other replica too, not as a replay.
    let wrong = AwsCredentials {
        access_key_id: aws.user.access_key_id.clone(),
        secret_access_key: "not-the-secret".into(),
        session_token: None,
    };
    let bad = unique(&wrong, &moto, "bad");
    a.expect_refused_because("bad signature", "sts_rejected", t, &bad.encode())
        .await;
    b.expect_refused_because(
        "bad signature, other replica",
        "sts_rejected",
        t,
        &bad.encode(),
    )
    .await;

    // The background tick prunes claims once they can no longer be fresh.
    a.clock.advance(30 * 60);
    a.state.governance().tick(false, true).await;
    let left: i64 = {
        let pool = match a.state.governance().store.pool() {
            tollgate_broker::governance::store::StorePool::Postgres(p) => p,
            tollgate_broker::governance::store::StorePool::Sqlite(_) => panic!("postgres expected"),
        };
        sqlx::query_scalar("SELECT COUNT(*) FROM replay_guard")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    assert_eq!(left, 0, "expired claims are pruned");

    // Fail closed: replica B loses its store. A fresh, valid proof is refused with 503
    // temporarily_unavailable (nothing about why), and STS is not asked.
    if let tollgate_broker::governance::store::StorePool::Postgres(p) =
        b.state.governance().store.pool()
    {
        p.close().await;
    }
    let fresh = unique(&aws.user, &moto, "fresh");
    let (status, body) = b.exchange(t, &fresh.encode()).await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        !body.to_string().contains("replay") && !body.to_string().contains("postgres"),
        "no detail: {body}"
    );
    // The refusal did not spend the proof: replica A (store fine) still accepts it.
    drop(b);
    let a2 = Broker::new(&identity, POLICY).await;
    a2.grant_and_proxy(t, &fresh.encode()).await;
    drop((a, a2));
    drop_pg_schema(&schema).await;
}
