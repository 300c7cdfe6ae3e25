//! Developer cloud sign-ins end to end: the real `tollgate-token` helper proves who a person is from the
//! sign-in their cloud CLI already holds, and the real `tollgate-broker` verifies it.
//!
//! - AWS IAM Identity Center: an SSO profile in `~/.aws/config`, the token `aws sso login` cached in
//!   `~/.aws/sso/cache/`, the portal's `GetRoleCredentials` (a faithful loopback fake: moto has no `sso`
//!   portal) handing out real moto session credentials, which sign `sts:GetCallerIdentity`; the broker
//!   replays it to moto, whose SigV4 check runs.
//! - The Azure CLI: a stand-in `az` executable printing what `az account get-access-token` prints, with a
//!   user's Entra token minted by the fake Entra issuer; the broker's `[[identity.azure]]` verifies it and
//!   the policy matches the person (`idtyp = "user"`, `upn`).
//!
//! Each through a table of cases: the working sign-in, and every way it fails with its exit code and
//! the one line the person reads.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use support::peers::{moto, moto_assume_role, moto_iam_user};
use support::{Broker, BrokerSpec, bin};
use tollgate_testkit::idp::{self, IdpConfig, MintRequest, time_rfc3339 as rfc3339};
use tollgate_testkit::sso_portal::{self, RoleCredentials};

const POLICY: &str = r#"
[[rule]]
name = "aws-users"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:user/*" }
principal = "aws:{attr.user}"
models = ["*"]

[[rule]]
name = "sso-developers"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:role/AWSReservedSSO_Developer_*" }
principal = "sso:{attr.session}"
models = ["*"]

[[rule]]
name = "azure-people"
match = { kind = "azure", attributes = { idtyp = "user", appid = "04b07795-8ddb-461a-bbee-02f9e1bf7b46" } }
principal = "person:{attr.upn}"
models = ["*"]

[[rule]]
name = "azure-workloads"
match = { kind = "azure" }
principal = "azure:{subject}"
models = ["*"]
"#;

/// The role IAM Identity Center creates for a permission set (the path is dropped in the assumed-role ARN).
const SSO_ROLE: &str = "arn:aws:iam::123456789012:role/AWSReservedSSO_Developer_0123456789abcdef";
const ACCOUNT: &str = "123456789012";
/// `sha1("corp")` and `sha1("https://d-1234567890.awsapps.com/start")`: the AWS CLI's cache file names
/// for the session `corp` and for the legacy profile's start URL (computed independently of the helper).
const SESSION_CACHE: &str = "ee0bfd2552fbd840c02cc48b6e823320543c450f.json";
const LEGACY_CACHE: &str = "7487b5b67d5fa1132cf33fa93ae51ef38cc37752.json";

/// A case's outcome: `Ok(the token's principal)` or `Err((exit code, a phrase of the one stderr line))`.
type Outcome = Result<&'static str, (i32, &'static str)>;
/// (case, AWS profile, session cache file, legacy cache file, extra env, outcome).
type SsoCase<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<(&'static str, String)>,
    Outcome,
);
/// (case, `az`'s (stdout, stderr, exit code) or `None` when not installed, extra env, outcome).
type AzCase<'a> = (
    &'a str,
    Option<(String, &'a str, i32)>,
    Vec<(&'static str, &'static str)>,
    Outcome,
);

async fn broker(identity: &str) -> Broker {
    Broker::start(BrokerSpec {
        extra_config: format!(
            "[providers.demo]\nkind = \"demo\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1\", output = \"2\" }}\n\n{identity}"
        ),
        policy: POLICY.into(),
        env: vec![],
    })
    .await
}

struct HelperRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the helper with exactly `env` (plus HOME, no cache, the broker URL, and no instance metadata).
async fn helper(broker: &str, home: &Path, env: &[(&str, String)]) -> HelperRun {
    let out = tokio::process::Command::new(bin("tollgate-token"))
        .env_clear()
        .env("HOME", home)
        .env("TOLLGATE_BROKER", broker)
        .env("TOLLGATE_NO_CACHE", "1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run helper");
    HelperRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).expect("jwt"))
        .expect("b64");
    serde_json::from_slice(&p).expect("claims")
}

/// The helper printed one token line; a proxied request with it succeeds. Returns the token's claims.
async fn token_works(b: &Broker, run: &HelperRun) -> Value {
    assert_eq!(
        run.code,
        Some(0),
        "helper failed: {}\nbroker log:\n{}",
        run.stderr,
        b.log()
    );
    let token = run.stdout.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && !token.is_empty(),
        "stdout must be one token line: {:?}",
        run.stdout
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-5.5", "input": "hello", "stream": false}))
        .send()
        .await
        .expect("proxy");
    assert_eq!(r.status(), 200);
    claims(token)
}

/// What a failing run must show: its exit code, a phrase of its one stderr line, and an empty stdout.
fn assert_fails(run: &HelperRun, code: i32, phrase: &str, case: &str) {
    assert_eq!(run.code, Some(code), "{case}: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{case}: stdout {:?}", run.stdout);
    assert!(run.stderr.contains(phrase), "{case}: {}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "{case}: one line: {}",
        run.stderr
    );
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

const CLIENT_ID: &str = "client-id-from-register-client";
const CLIENT_SECRET: &str = "client-secret-from-register-client-0001";

/// A cache file as `aws sso login` (AWS CLI v2) writes it: with a refresh token, the client registration
/// the `sso-session` form keeps beside it; without, the legacy form's four fields.
fn sso_cache(access_token: &str, expires_at: &str, refresh_token: Option<&str>) -> String {
    let mut v = json!({
        "startUrl": "https://d-1234567890.awsapps.com/start",
        "region": "us-east-1",
        "accessToken": access_token,
        "expiresAt": expires_at,
    });
    if let Some(r) = refresh_token {
        v["clientId"] = json!(CLIENT_ID);
        v["clientSecret"] = json!(CLIENT_SECRET);
        v["registrationExpiresAt"] = json!(rfc3339(now() + 90 * 86_400));
        v["refreshToken"] = json!(r);
    }
    v.to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test]
async fn aws_iam_identity_center_profiles_through_helper_and_broker() {
    let moto = moto().await;
    let user = moto_iam_user(&moto.1);
    let role = moto_assume_role(&moto.1, &user, SSO_ROLE, "ada@example.com");
    let portal = sso_portal::spawn().await.expect("portal");
    let access_token = "aoaAAAAAGbsSSOaccesstoken-ada-0001";
    let creds = RoleCredentials {
        access_key_id: role.access_key_id.clone(),
        secret_access_key: role.secret_access_key.clone(),
        session_token: role.session_token.clone(),
        expiration_ms: (now() + 3600) * 1000,
    };
    portal.assign(access_token, ACCOUNT, "Developer", creds);
    let b = broker(&format!(
        "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n",
        moto.1
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    let aws = home.path().join(".aws");
    write(
        &aws.join("config"),
        "[default]\nregion = us-east-1\n\n\
         [profile dev]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Developer\nregion = us-east-1\n\n\
         [profile admin]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Admin\n\n\
         [profile legacy]\nsso_start_url = https://d-1234567890.awsapps.com/start\nsso_region = us-east-1\n\
         sso_account_id = 123456789012\nsso_role_name = Developer\n\n\
         [profile broken]\nsso_session = corp\nsso_account_id = 123456789012\n\n\
         [sso-session corp]\nsso_start_url = https://d-1234567890.awsapps.com/start\nsso_region = us-east-1\n\
         sso_registration_scopes = sso:account:access\n",
    );
    let cache = aws.join("sso/cache");
    let valid = sso_cache(access_token, &rfc3339(now() + 3600), None);
    let env = |profile: &str, extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("TOLLGATE_IDENTITY", "aws".to_string()),
            ("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1)),
            ("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e".into()),
            ("AWS_ENDPOINT_URL_SSO", portal.url()),
            ("AWS_ENDPOINT_URL_SSO_OIDC", portal.url()),
            ("AWS_PROFILE", profile.to_string()),
        ];
        v.extend_from_slice(extra);
        v
    };
    let refreshed_token = "aoaAAAAAGbsSSOaccesstoken-ada-0002";
    let secrets = [
        access_token,
        refreshed_token,
        CLIENT_SECRET,
        "rt-first-0001",
        "rt-rotated-0002",
        role.secret_access_key.as_str(),
        role.session_token.as_str(),
    ];

    let expired = sso_cache(access_token, &rfc3339(now() - 60), None);
    let unknown_token = sso_cache("aoa-signed-out-elsewhere", &rfc3339(now() + 3600), None);
    let refresh_refused = sso_cache(access_token, &rfc3339(now() - 60), Some("rt-revoked"));
    let cases: Vec<SsoCase<'_>> = vec![
        (
            "sso-session profile",
            "dev",
            Some(&valid),
            None,
            vec![],
            Ok("sso:ada@example.com"),
        ),
        (
            "legacy profile",
            "legacy",
            None,
            Some(&valid),
            vec![],
            Ok("sso:ada@example.com"),
        ),
        (
            "environment keys come before the profile",
            "dev",
            Some(&valid),
            None,
            vec![
                ("AWS_ACCESS_KEY_ID", user.access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", user.secret_access_key.clone()),
            ],
            Ok("aws:builder"),
        ),
        (
            "expired cached token",
            "dev",
            Some(&expired),
            None,
            vec![],
            Err((67, "has expired; run `aws sso login --profile dev`")),
        ),
        (
            "expired token whose refresh the OIDC service refuses",
            "dev",
            Some(&refresh_refused),
            None,
            vec![],
            Err((
                67,
                "HTTP 400 InvalidGrantException: Invalid refresh token provided; run `aws sso login --profile dev`",
            )),
        ),
        (
            "missing cache file",
            "legacy",
            Some(&valid),
            None,
            vec![],
            Err((67, "no cached sign-in")),
        ),
        (
            "portal 401: the sign-in ended elsewhere",
            "dev",
            Some(&unknown_token),
            None,
            vec![],
            Err((
                67,
                "HTTP 401 UnauthorizedException: Session token not found or invalid",
            )),
        ),
        (
            "portal 403: role not assigned",
            "admin",
            Some(&valid),
            None,
            vec![],
            Err((
                65,
                "HTTP 403 ForbiddenException: No access (profile `admin`: no assignment of role Admin",
            )),
        ),
        (
            "profile without sso_role_name",
            "broken",
            Some(&valid),
            None,
            vec![],
            Err((65, "profile `broken` in")),
        ),
        (
            "portal over plain http to a non-loopback host",
            "dev",
            Some(&valid),
            None,
            vec![("AWS_ENDPOINT_URL_SSO", "http://sso.corp.example".into())],
            Err((
                65,
                "AWS_ENDPOINT_URL_SSO \"http://sso.corp.example\": plain http is allowed only to loopback",
            )),
        ),
    ];
    for (case, profile, session, legacy, extra, outcome) in cases {
        for (file, content) in [(SESSION_CACHE, session), (LEGACY_CACHE, legacy)] {
            let _ = std::fs::remove_file(cache.join(file));
            if let Some(c) = content {
                write(&cache.join(file), c);
            }
        }
        let calls = portal.calls();
        let run = helper(&b.url, home.path(), &env(profile, &extra)).await;
        for s in secrets {
            assert!(
                !run.stderr.contains(s) && !b.log().contains(s),
                "{case}: a secret leaked"
            );
        }
        match outcome {
            Ok(principal) => {
                let c = token_works(&b, &run).await;
                assert_eq!(c["sub"], principal, "{case}");
                if principal.starts_with("sso:") {
                    assert_eq!(
                        c["tollgate"]["identity"]["subject"],
                        "arn:aws:iam::123456789012:role/AWSReservedSSO_Developer_0123456789abcdef",
                        "{case}"
                    );
                    assert_eq!(portal.calls(), calls + 1, "{case}: one portal call");
                } else {
                    assert_eq!(portal.calls(), calls, "{case}: no portal call");
                }
            }
            Err((code, phrase)) => {
                assert_fails(&run, code, phrase, case);
                if code == 67 && phrase.contains("run `") {
                    assert!(
                        run.stderr.contains("run `aws sso login --profile"),
                        "{case}"
                    );
                }
            }
        }
    }
    // The bearer token went to the portal and nowhere else.
    assert!(portal.seen_tokens().iter().any(|t| t == access_token));

    // An `sso-session` token about to expire is refreshed with the cached refresh token (SSO OIDC
    // CreateToken), the rotated tokens written back in place (0600, the CLI's other fields kept), and the
    // next run uses the file as written without another refresh.
    portal.assign(
        refreshed_token,
        ACCOUNT,
        "Developer",
        RoleCredentials {
            access_key_id: role.access_key_id.clone(),
            secret_access_key: role.secret_access_key.clone(),
            session_token: role.session_token.clone(),
            expiration_ms: (now() + 3600) * 1000,
        },
    );
    portal.allow_refresh(sso_portal::RefreshGrant {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_token: "rt-first-0001".into(),
        new_access_token: refreshed_token.into(),
        expires_in: 3600,
        new_refresh_token: Some("rt-rotated-0002".into()),
    });
    let file = cache.join(SESSION_CACHE);
    write(
        &file,
        &sso_cache(access_token, &rfc3339(now() + 120), Some("rt-first-0001")),
    );
    let (refreshes, calls) = (portal.refreshes(), portal.calls());
    for round in 0..2 {
        let run = helper(&b.url, home.path(), &env("dev", &[])).await;
        assert_eq!(token_works(&b, &run).await["sub"], "sso:ada@example.com");
        for s in secrets {
            assert!(
                !run.stderr.contains(s) && !b.log().contains(s),
                "round {round}: a secret leaked"
            );
        }
    }
    assert_eq!(portal.refreshes(), refreshes + 1, "refreshed once");
    assert_eq!(portal.calls(), calls + 2);
    assert_eq!(
        portal.seen_tokens()[portal.seen_tokens().len() - 2..],
        [refreshed_token, refreshed_token]
    );
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    assert_eq!(written["accessToken"], refreshed_token);
    assert_eq!(written["refreshToken"], "rt-rotated-0002");
    assert_eq!(written["clientId"], CLIENT_ID);
    assert_eq!(
        written["startUrl"],
        "https://d-1234567890.awsapps.com/start"
    );
    let expires = written["expiresAt"].as_str().expect("expiresAt");
    assert!(
        expires > rfc3339(now() + 3000).as_str() && expires <= rfc3339(now() + 3600).as_str(),
        "{expires}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(
        std::fs::read_dir(&cache).expect("ls").count(),
        1,
        "no temporary file left beside the cache file"
    );
}

/// The inside of a single-quoted shell word.
fn sq(s: &str) -> String {
    s.replace('\'', "'\\''")
}

/// A stand-in `az` in `dir/bin`: checks its arguments, records them, and answers as Azure CLI 2.x does.
/// Only shell built-ins: the helper runs it with a cleared environment.
fn fake_az(
    dir: &Path,
    expected_args: &str,
    stdout: &str,
    stderr: &str,
    code: i32,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let az = dir.join("bin/az");
    let log = dir.join("az-args.log");
    write(
        &az,
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\n\
             if [ \"$*\" != '{expected_args}' ]; then printf 'ERROR: unrecognized arguments: %s\\n' \"$*\" >&2; exit 2; fi\n\
             printf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n",
            log = log.display(),
            stdout = sq(stdout),
            stderr = sq(stderr),
        ),
    );
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    az
}

#[tokio::test]
async fn azure_cli_sign_in_through_helper_and_broker() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let tenant = idp.managed_identity().tenant.clone();
    let b = broker(&format!(
        "[[identity.azure]]\nauthority = \"{}\"\ntenants = [\"{tenant}\"]\naudiences = [\"api://tollgate\"]\n",
        idp.authority()
    ))
    .await;
    // A user's v1 access token as Entra issues it to the Azure CLI for the broker's app: the CLI's client
    // ID as `appid`, a delegated scope, `idtyp = user`, no `xms_mirid`.
    let user_token = |aud: &str| {
        idp.mint(&MintRequest {
            iss: Some(format!("https://sts.windows.net/{tenant}/")),
            sub: Some("pairwise-subject-of-ada".into()),
            aud: Some(json!(aud)),
            ttl_secs: Some(3600),
            claims: json!({
                "tid": tenant,
                "oid": "eeeeeeee-0000-0000-0000-00000000ada1",
                "upn": "ada@contoso.com",
                "unique_name": "ada@contoso.com",
                "name": "Ada Lovelace",
                "idtyp": "user",
                "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
                "scp": "user_impersonation",
                "ver": "1.0",
            })
            .as_object()
            .cloned()
            .expect("obj"),
            ..MintRequest::default()
        })
        .expect("mint")
    };
    // What `az account get-access-token --output json` prints (Azure CLI 2.54+: `expires_on` too).
    let answer = |token: &str| {
        json!({
            "accessToken": token,
            "expiresOn": "2026-12-07 05:00:00.000000",
            "expires_on": now() + 3600,
            "subscription": "00000000-1111-2222-3333-444444444444",
            "tenant": tenant,
            "tokenType": "Bearer",
        })
        .to_string()
    };
    let args = "account get-access-token --output json --scope api://tollgate/.default";
    let not_logged_in = "ERROR: Please run 'az login' to setup account.\n";

    let good = user_token("api://tollgate");
    let other_audience = user_token("api://another-service");
    let cases: Vec<AzCase<'_>> = vec![
        (
            "signed in",
            Some((answer(&good), "", 0)),
            vec![],
            Ok("person:ada@contoso.com"),
        ),
        (
            "not signed in",
            Some((String::new(), not_logged_in, 1)),
            vec![],
            Err((
                67,
                "Please run 'az login' to setup account.; run `az login`",
            )),
        ),
        (
            "a chain stops at the expired sign-in and says what to run",
            Some((String::new(), not_logged_in, 1)),
            vec![
                ("TOLLGATE_IDENTITY", "chain"),
                ("TOLLGATE_CHAIN", "azure-cli,aws"),
            ],
            Err((67, "run `az login`")),
        ),
        (
            "not installed",
            None,
            vec![],
            Err((65, "the Azure CLI (`az`) is not installed or not on PATH")),
        ),
        (
            "a token for another audience is refused by the broker",
            Some((answer(&other_audience), "", 0)),
            vec![],
            Err((66, "invalid_grant")),
        ),
        (
            "az prints no token",
            Some(("WARNING: not json".into(), "", 0)),
            vec![],
            Err((65, "printed no JSON with an accessToken")),
        ),
    ];
    for (case, az, extra, outcome) in cases {
        let home = tempfile::tempdir().expect("tmp");
        let path = match &az {
            Some((stdout, stderr, code)) => {
                fake_az(home.path(), args, stdout, stderr, *code);
                home.path().join("bin").display().to_string()
            }
            None => home.path().join("empty-bin").display().to_string(),
        };
        let mut env = vec![
            ("TOLLGATE_IDENTITY", "azure-cli".to_string()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("PATH", path),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| *key != k);
            env.push((k, v.to_string()));
        }
        let run = helper(&b.url, home.path(), &env).await;
        assert!(
            !run.stderr.contains(&good) && !b.log().contains(&good),
            "{case}: the Entra token leaked"
        );
        match outcome {
            Ok(principal) => {
                let c = token_works(&b, &run).await;
                assert_eq!(c["sub"], principal, "{case}");
                assert_eq!(c["tollgate"]["identity"]["kind"], "azure", "{case}");
                assert_eq!(
                    c["tollgate"]["identity"]["subject"], "eeeeeeee-0000-0000-0000-00000000ada1",
                    "{case}: the person's object ID"
                );
            }
            Err((code, phrase)) => assert_fails(&run, code, phrase, case),
        }
        if az.is_some() {
            let log = std::fs::read_to_string(home.path().join("az-args.log")).expect("az ran");
            assert_eq!(
                log.lines().collect::<Vec<_>>(),
                [args],
                "{case}: az ran once"
            );
        }
    }

    // `TOLLGATE_AZ` names the executable; a tenant is passed as `--tenant`.
    let home = tempfile::tempdir().expect("tmp");
    let az = fake_az(
        home.path(),
        &format!("{args} --tenant contoso.onmicrosoft.com"),
        &answer(&good),
        "WARNING: a warning the CLI prints on stderr\n",
        0,
    );
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure-cli".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            (
                "TOLLGATE_AZURE_CLI_TENANT",
                "contoso.onmicrosoft.com".into(),
            ),
            ("TOLLGATE_AZ", az.display().to_string()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "person:ada@contoso.com");

    // `policy explain` tells the person's rule from the workloads' with the same attributes.
    let policy = home.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write");
    let explain = |extra: &[&str]| {
        let out = std::process::Command::new(bin("tollgate-broker"))
            .args(["policy", "explain", "--file"])
            .arg(&policy)
            .args([
                "--kind",
                "azure",
                "--subject",
                "eeeeeeee-0000-0000-0000-00000000ada1",
            ])
            .args(extra)
            .output()
            .expect("explain");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain(&[
        "--attr",
        "idtyp=user",
        "--attr",
        "appid=04b07795-8ddb-461a-bbee-02f9e1bf7b46",
        "--attr",
        "upn=ada@contoso.com",
    ]);
    assert!(
        text.contains(
            "decision: ALLOW by rule \"azure-people\": principal \"person:ada@contoso.com\""
        ),
        "{text}"
    );
    let text = explain(&["--attr", "idtyp=app"]);
    assert!(
        text.contains("decision: ALLOW by rule \"azure-workloads\""),
        "{text}"
    );

    // A hung `az` is stopped before the run's deadline, reported as the CLI's failure (exit 65, not the
    // broker's 69), and killed: nothing is left running.
    let home = tempfile::tempdir().expect("tmp");
    let pid_file = home.path().join("az.pid");
    let az = home.path().join("bin/az");
    write(
        &az,
        &format!(
            "#!/bin/sh\nprintf '%s' \"$$\" > '{}'\nexec /bin/sleep 30\n",
            pid_file.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let started = std::time::Instant::now();
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure-cli".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("TOLLGATE_AZ", az.display().to_string()),
            ("TOLLGATE_TIMEOUT_MS", "1500".into()),
        ],
    )
    .await;
    let took = started.elapsed();
    assert_fails(
        &run,
        65,
        "`az account get-access-token` did not answer within",
        "hung az",
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    let pid = std::fs::read_to_string(&pid_file).expect("az started");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "az ({pid}) is still running"
    );
}
