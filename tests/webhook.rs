//! The harness's webhook receiver records what clients send and answers with what the test asks for.

use std::time::Duration;

use axum::http::StatusCode;

use crate::harness::TestEnv;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn given_receiver_when_json_posted_then_method_path_headers_and_body_are_recorded() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let receiver = env.webhook();

    let response = reqwest::Client::new()
        .post(receiver.url_for("/hooks/run?attempt=1"))
        .header("x-freezeframe-run", "run-42")
        .json(&serde_json::json!({"status": "Success", "namespaces": ["shop"]}))
        .send()
        .await?;

    assert_eq!(response.status(), StatusCode::OK);
    let request = receiver.wait_for_requests(1, WAIT).await?.remove(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/run");
    assert_eq!(request.query.as_deref(), Some("attempt=1"));
    assert_eq!(request.header("x-freezeframe-run"), Some("run-42"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json()?,
        serde_json::json!({"status": "Success", "namespaces": ["shop"]})
    );
    Ok(())
}

#[tokio::test]
async fn given_failing_receiver_when_posted_then_client_sees_the_status_and_request_is_still_recorded()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let receiver = env.webhook();
    receiver.respond_with(StatusCode::SERVICE_UNAVAILABLE);
    receiver.respond_next([StatusCode::INTERNAL_SERVER_ERROR]);
    let client = reqwest::Client::new();

    let first = client.post(receiver.url_for("/hook")).body("one").send().await?;
    let second = client.post(receiver.url_for("/hook")).body("two").send().await?;

    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bodies: Vec<_> = receiver
        .wait_for_requests(2, WAIT)
        .await?
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies, vec!["one", "two"]);
    Ok(())
}

#[tokio::test]
async fn given_requests_arriving_later_when_waiting_then_wait_returns_once_enough_arrived()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let url = env.webhook().url_for("/late");
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for _ in 0..3 {
            client.post(&url).send().await?;
        }
        anyhow::Ok(())
    });

    let requests = env.webhook().wait_for_requests(3, WAIT).await?;

    assert_eq!(requests.len(), 3);
    sender.await??;
    Ok(())
}

#[tokio::test]
async fn given_too_few_requests_when_waiting_then_wait_fails_after_timeout_saying_what_arrived()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    reqwest::Client::new()
        .get(env.webhook().url_for("/only-one"))
        .send()
        .await?;

    let error = env
        .webhook()
        .wait_for_requests(2, Duration::from_millis(200))
        .await
        .unwrap_err()
        .to_string();

    assert!(
        error.contains("expected 2 request(s)") && error.contains("got 1"),
        "{error}"
    );
    assert!(error.contains("GET /only-one"), "{error}");
    Ok(())
}
