//! Identity test peers on loopback: moto (AWS STS/IAM, real SigV4 checks) and an OpenBao dev server.

use super::python_bin;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// A peer process, killed on drop; `.1` is its base URL.
pub struct PeerProc(pub std::process::Child, pub String);

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn venv_bin(name: &str) -> PathBuf {
    python_bin().with_file_name(name)
}

pub async fn wait_port(port: u16, what: &str) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not start on 127.0.0.1:{port}");
}

/// moto with SigV4 enforcement after 5 unauthenticated bootstrap calls.
pub async fn moto() -> PeerProc {
    moto_with_auth(Some(5)).await
}

/// moto; `no_auth_actions: None` = no SigV4 enforcement (then it also answers for any key).
pub async fn moto_with_auth(no_auth_actions: Option<u32>) -> PeerProc {
    let port = free_port();
    let mut cmd = std::process::Command::new(venv_bin("moto_server"));
    if let Some(n) = no_auth_actions {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
    }
    let child = cmd
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (run scripts/install-test-tools.sh)");
    wait_port(port, "moto_server").await;
    PeerProc(child, format!("http://127.0.0.1:{port}"))
}

/// Keys of a real IAM user (`builder`, allowed `sts:*`) created in a moto started with [`moto`]; the
/// bootstrap calls are used up afterwards so every later call is SigV4-checked.
pub struct IamUser {
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub fn moto_iam_user(moto_url: &str) -> IamUser {
    let out = std::process::Command::new(python_bin())
        .arg("-c")
        .arg(
            r#"
import boto3, json, os
url = os.environ["MOTO_URL"]
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="builder")
key = iam.create_access_key(UserName="builder")["AccessKey"]
iam.put_user_policy(UserName="builder", PolicyName="sts", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}]}))
bogus = boto3.client("sts", **kw)
for _ in range(10):
    try:
        bogus.get_caller_identity()
    except Exception:
        break
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"]}))
"#,
        )
        .env("MOTO_URL", moto_url)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Value = serde_json::from_slice(&out.stdout).expect("json");
    IamUser {
        access_key_id: keys["ak"].as_str().expect("ak").into(),
        secret_access_key: keys["sk"].as_str().expect("sk").into(),
    }
}

/// Session credentials of `role_arn` (session `session`), assumed in moto as `user` — real credentials
/// moto's SigV4 check accepts, as the IAM Identity Center portal hands out for a permission set's role.
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

pub fn moto_assume_role(
    moto_url: &str,
    user: &IamUser,
    role_arn: &str,
    session: &str,
) -> SessionCredentials {
    let out = std::process::Command::new(python_bin())
        .arg("-c")
        .arg(
            r#"
import boto3, json, os
sts = boto3.client("sts", endpoint_url=os.environ["MOTO_URL"], region_name="us-east-1",
                   aws_access_key_id=os.environ["AK"], aws_secret_access_key=os.environ["SK"])
c = sts.assume_role(RoleArn=os.environ["ROLE"], RoleSessionName=os.environ["SESSION"])["Credentials"]
print(json.dumps({"ak": c["AccessKeyId"], "sk": c["SecretAccessKey"], "st": c["SessionToken"]}))
"#,
        )
        .env("MOTO_URL", moto_url)
        .env("AK", &user.access_key_id)
        .env("SK", &user.secret_access_key)
        .env("ROLE", role_arn)
        .env("SESSION", session)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    SessionCredentials {
        access_key_id: v["ak"].as_str().expect("ak").into(),
        secret_access_key: v["sk"].as_str().expect("sk").into(),
        session_token: v["st"].as_str().expect("st").into(),
    }
}

/// An OpenBao dev server (root token `root`).
pub struct Bao {
    pub proc: PeerProc,
}

impl Bao {
    pub async fn start() -> Bao {
        let port = free_port();
        let child = std::process::Command::new(venv_bin("bao"))
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bao (run scripts/install-test-tools.sh)");
        let proc = PeerProc(child, format!("http://127.0.0.1:{port}"));
        wait_port(port, "bao").await;
        Bao { proc }
    }

    pub fn base(&self) -> &str {
        &self.proc.1
    }

    /// The issuer the broker's `[[identity.oidc]] kind = "vault"` block trusts.
    pub fn issuer(&self) -> String {
        format!("{}/v1/identity/oidc", self.base())
    }

    /// One API call; panics (with OpenBao's answer) unless it succeeds.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        bao_call(self.base(), method, path, token, body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, "root", Some(body))
            .await
    }

    /// Mount auth method `kind` at its default path unless it is mounted already.
    pub async fn enable_auth(&self, kind: &str) {
        let mounts = self
            .call(reqwest::Method::GET, "sys/auth", "root", None)
            .await;
        if !mounts["data"][format!("{kind}/")].is_object() {
            self.post(&format!("sys/auth/{kind}"), json!({ "type": kind }))
                .await;
        }
    }

    /// Identity tokens: issuer = the server, key and role `tollgate` (audience `tollgate`), claims
    /// `entity_name` and `groups`; policy `tollgate-id` may read them.
    pub async fn enable_identity_tokens(&self) {
        self.post(
            "sys/policies/acl/tollgate-id",
            json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }"}),
        )
        .await;
        self.post("identity/oidc/config", json!({"issuer": self.base()}))
            .await;
        self.post(
            "identity/oidc/key/tollgate",
            json!({"allowed_client_ids": "*"}),
        )
        .await;
        self.post(
            "identity/oidc/role/tollgate",
            json!({"key": "tollgate", "ttl": "15m", "client_id": "tollgate",
                   "template": r#"{"entity_name": {{identity.entity.name}}, "groups": {{identity.entity.groups.names}}}"#}),
        )
        .await;
    }

    /// An AppRole `name` (policy `tollgate-id`) whose entity is named `entity_name` (the entity is
    /// created at the first login, so log in once and rename it). Returns `(role_id, secret_id)`.
    pub async fn approle(&self, name: &str, entity_name: &str) -> (String, String) {
        self.enable_auth("approle").await;
        self.post(
            &format!("auth/approle/role/{name}"),
            json!({"token_policies": "tollgate-id"}),
        )
        .await;
        let role_id = self
            .call(
                reqwest::Method::GET,
                &format!("auth/approle/role/{name}/role-id"),
                "root",
                None,
            )
            .await["data"]["role_id"]
            .as_str()
            .expect("role_id")
            .to_string();
        let secret_id = self
            .post(&format!("auth/approle/role/{name}/secret-id"), json!({}))
            .await["data"]["secret_id"]
            .as_str()
            .expect("secret_id")
            .to_string();
        let login = self
            .call(
                reqwest::Method::POST,
                "auth/approle/login",
                "",
                Some(json!({"role_id": role_id, "secret_id": secret_id})),
            )
            .await;
        let entity = login["auth"]["entity_id"].as_str().expect("entity");
        self.post(
            &format!("identity/entity/id/{entity}"),
            json!({"name": entity_name}),
        )
        .await;
        (role_id, secret_id)
    }
}

pub async fn bao_call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}/v1/{path}"))
        .header("x-vault-token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("openbao");
    let status = r.status();
    let text = r.text().await.expect("text");
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
