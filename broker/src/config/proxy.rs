//! The outbound proxy for upstream providers, from the environment (not the config file): `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, upper case first, then lower case — the variables and the
//! rules reqwest and curl follow (hyper-util's proxy [`Matcher`]), read once at start-up through the
//! injected [`Env`]. Ignored when `REQUEST_METHOD` is set (a CGI process, where `HTTP_PROXY` can come from
//! a request's `Proxy:` header).

use super::Env;
use hyper_util::client::proxy::matcher::Matcher;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
