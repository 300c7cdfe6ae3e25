//! The ready-to-copy files in examples/ stay valid: policies for every identity kind, the production
//! config, the Kubernetes ConfigMap's embedded files, and a Grafana dashboard that only queries metrics
//! the broker really exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tollgate_broker::config::{Config, Source};
use tollgate_broker::policy::Policy;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn a_policy_per_identity_kind() {
    let mut kinds = BTreeSet::new();
    for e in std::fs::read_dir(examples().join("policies")).unwrap() {
        let path = e.unwrap().path();
        let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!p.rules.is_empty(), "{}", path.display());
        kinds.extend(p.rules.iter().map(|r| r.kind.as_str()));
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["aws", "azure", "oidc", "static", "vault"]
    );
}

#[test]
fn production_config_and_configmap_are_valid() {
    let prod = Config::load(&examples().join("production/broker.toml"), &no_env()).unwrap();
    assert!(prod.server.tls.is_some());
    assert!(!prod.metrics.public);
    assert!(prod.admin.key_sha256.is_some());
    assert_eq!(prod.budgets[0].thresholds, vec![50, 80, 100]);
    assert_eq!(
        prod.alerts.disabled,
        vec!["ops".to_string(), "slack".to_string()],
        "no env: sinks left out"
    );
    assert!(
        prod.telemetry
            .otlp_traces_url
            .as_deref()
            .is_some_and(|u| u.ends_with("/v1/traces"))
    );

    // Pull the literal blocks out of the ConfigMap and validate them as files.
    let cm = std::fs::read_to_string(examples().join("kubernetes/configmap.yaml")).unwrap();
    let block = |key: &str| -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in cm.lines() {
            if line.trim_start().starts_with(&format!("{key}: |")) {
                inside = true;
                continue;
            }
            if inside {
                if !line.is_empty() && !line.starts_with("    ") {
                    break;
                }
                out.push_str(line.strip_prefix("    ").unwrap_or(""));
                out.push('\n');
            }
        }
        assert!(!out.trim().is_empty(), "{key} not found in the ConfigMap");
        out
    };
    let c = Config::from_source(
        Source {
            path: "/etc/tollgate/broker.toml".into(),
            text: block("broker.toml"),
        },
        &BTreeMap::from([(
            "TOLLGATE_DATABASE_URL".to_string(),
            "postgres://tollgate@db/tollgate".to_string(),
        )]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.policy_file, PathBuf::from("/etc/tollgate/policy.toml"));
    assert!(
        format!("{:?}", c.store).to_lowercase().contains("postgres"),
        "{:?}",
        c.store
    );
    Policy::from_source(&Source {
        path: "policy.toml".into(),
        text: block("policy.toml"),
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let deploy = std::fs::read_to_string(examples().join("kubernetes/deployment.yaml")).unwrap();
    assert!(deploy.contains("replicas: 3"));
    let pdb = std::fs::read_to_string(examples().join("kubernetes/pdb.yaml")).unwrap();
    assert!(pdb.contains("kind: PodDisruptionBudget"));
    // The pod's grace period must cover the broker's drain.
    assert!(
        deploy.contains("terminationGracePeriodSeconds: 75")
            && cm.contains("shutdown_grace_secs = 60")
    );
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    use tollgate_broker::metrics::{Metrics, MetricsConfig, RefusalReason, Settled};
    let m = Metrics::new(MetricsConfig::default(), &[]);
    m.http("/v1/responses", http::StatusCode::OK, 0.1);
    m.request("/v1/responses", "gpt-5.5", "openai", http::StatusCode::OK);
    m.refusal(RefusalReason::Rate);
    m.mint("oidc", "minted");
    m.failover("openai", "timeout");
    m.affinity("kept");
    m.reasoning_stripped("openai", 1);
    m.breaker_gauge("openai", "openai/gpt-5.5").set(0.0);
    m.added_latency("/v1/responses", 0.001);
    m.settled(&Settled {
        model: "gpt-5.5",
        provider: "openai",
        principal: "p",
        input_tokens: 1,
        cached_input_tokens: 0,
        output_tokens: 1,
        cost_nanos: 1,
        end: "completed",
        upstream_secs: 1.0,
        ttfb_secs: Some(0.5),
    });
    let exported: BTreeSet<String> = m
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let text = std::fs::read_to_string(examples().join("grafana/tollgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut used = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("tollgate_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_string();
                used.insert(base);
            }
        }
    }
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries unknown metrics {missing:?}; exported: {exported:?}"
    );
}

#[test]
fn systemd_unit_drains_on_sigterm() {
    let unit = std::fs::read_to_string(examples().join("systemd/tollgate-broker.service")).unwrap();
    for needle in [
        "ExecStart=/usr/local/bin/tollgate-broker",
        "KillSignal=SIGTERM",
        "StateDirectory=tollgate",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(needle), "{needle}");
    }
}
