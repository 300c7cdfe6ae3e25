//! The current request's id: set once per request by the HTTP middleware ([`crate::observe::track`]),
//! read wherever a record names the request (the audit trail, the log line). A task-local, so nothing has to
//! carry it through signatures.

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id; a fresh one outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| uuid::Uuid::now_v7().to_string())
}

/// Run `fut` as the request `id`.
pub async fn scope<F: std::future::Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}
