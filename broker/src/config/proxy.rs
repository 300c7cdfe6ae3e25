//! The outbound proxy for upstream providers, from the environment (not the config file): `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper case first, then lower case — the variables and the
//! rules reqwest and curl follow (hyper-util's proxy [`Matcher`]), read once at start-up through the
//! injected [`Env`]. Ignored when `REQUEST_METHOD` is set (a CGI process, where `HTTP_PROXY` can come from
//! a request's `Proxy:` header).

use super::Env;
use hyper_util::client::proxy::matcher::Matcher;

/// The variables as set. A proxy URL may carry credentials (`http://user:pass@proxy:3128`): `Debug`
/// (the whole `Config` derives it) shows them as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub all: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
    pub no: Option<String>,
}

impl ProxyEnv {
    pub fn read(env: &dyn Env) -> Self {
        if env.var("REQUEST_METHOD").is_some() {
            return ProxyEnv::default();
        }
        let first = |names: [&str; 2]| names.iter().find_map(|n| env.var(n));
        ProxyEnv {
            all: first(["ALL_PROXY", "all_proxy"]),
            http: first(["HTTP_PROXY", "http_proxy"]),
            https: first(["HTTPS_PROXY", "https_proxy"]),
            no: first(["NO_PROXY", "no_proxy"]),
        }
    }

    /// Which destinations go through which proxy.
    pub fn matcher(&self) -> Matcher {
        let v = |o: &Option<String>| o.clone().unwrap_or_default();
        Matcher::builder()
            .all(v(&self.all))
            .http(v(&self.http))
            .https(v(&self.https))
            .no(v(&self.no))
            .build()
    }
}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: &Option<String>| v.as_deref().map(redact_userinfo);
        f.debug_struct("ProxyEnv")
            .field("all", &shown(&self.all))
            .field("http", &shown(&self.http))
            .field("https", &shown(&self.https))
            .field("no", &self.no)
            .finish()
    }
}

/// `scheme://user:pass@host:port/…` → `scheme://***@host:port/…`; anything without credentials as it is.
fn redact_userinfo(url: &str) -> String {
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[rest_at..].find('/').map_or(url.len(), |i| rest_at + i);
    match url[rest_at..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_at], &url[rest_at + at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn debug_never_shows_a_proxy_password() {
        let p = ProxyEnv::read(&env(&[
            (
                "HTTPS_PROXY",
                "http://svc-llm:hunter2-secret@proxy.corp:3128",
            ),
            ("ALL_PROXY", "svc:s3cret@proxy.corp:3128/path@x"),
            ("HTTP_PROXY", "http://proxy.corp:3128"),
        ]));
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("http://***@proxy.corp:3128"), "{shown}");
        assert!(shown.contains("***@proxy.corp:3128/path@x"), "{shown}");
        assert!(shown.contains("http://proxy.corp:3128"), "{shown}");
    }

    #[test]
    fn upper_case_first_then_lower_case() {
        let p = ProxyEnv::read(&env(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("no_proxy", "internal.example"),
        ]));
        assert_eq!(p.https.as_deref(), Some("http://upper:3128"));
        assert_eq!(p.no.as_deref(), Some("internal.example"));
        assert_eq!(p.http, None);
    }

    #[test]
    fn a_cgi_process_takes_no_proxy_from_its_environment() {
        let p = ProxyEnv::read(&env(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "http://attacker:80"),
        ]));
        assert_eq!(p, ProxyEnv::default());
    }

    #[test]
    fn all_proxy_covers_both_schemes_and_no_proxy_excludes() {
        let m = ProxyEnv::read(&env(&[
            ("ALL_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost,.corp.example"),
        ]))
        .matcher();
        let goes = |u: &str| m.intercept(&u.parse().expect("a URI")).is_some();
        assert!(goes("https://api.openai.com/v1/responses"));
        assert!(goes("http://api.example.com/v1"));
        assert!(!goes("https://llm.corp.example/v1"));
        assert!(!goes("http://localhost:8080/v1"));
        assert!(!goes("https://deep.x.corp.example/v1"));
    }
}
