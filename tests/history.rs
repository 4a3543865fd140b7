//! `GET /history`, black-box: paging, patterns, `earliest`, gaps after
//! retention, and the 400s and 405 of a bad request.

mod common;

use common::{Hub, client};
use serde_json::{Value, json};

/// Publishes one event per topic, in order, as one batch; returns the ids.
async fn publish_all(hub: &Hub, topics: &[&str]) -> Vec<String> {
    let body: String = topics
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}\n", json!({ "topic": t, "data": { "n": i } })))
        .collect();
    hub.publish_batch(body).await
}

/// `GET /history?{query}`, which must answer 200 with JSON.
async fn history(hub: &Hub, query: &str) -> Value {
    let response = client()
        .get(hub.at(&format!("/history?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "/history?{query}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "/history?{query}"
    );
    response.json().await.unwrap()
}

fn ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| e["id"].as_str().expect("event id").to_string())
        .collect()
}

fn next(body: &Value) -> Option<String> {
    match &body["next"] {
        Value::Null => None,
        Value::String(id) => Some(id.clone()),
        other => panic!("next is {other}"),
    }
}

/// Follows `next` from `after` until it is null; returns every page.
async fn all_pages(hub: &Hub, query: &str, mut after: Option<String>) -> Vec<Value> {
    let mut pages = Vec::new();
    loop {
        let q = match &after {
            Some(after) => format!("{query}&after={after}"),
            None => query.to_string(),
        };
        let page = history(hub, &q).await;
        after = next(&page);
        pages.push(page);
        if after.is_none() {
            return pages;
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

#[tokio::test]
async fn paging_through_250_events_by_100() {
    let hub = Hub::start(&[]).await;
    let published = publish_all(&hub, &["p"; 250]).await;
    let pages = all_pages(&hub, "topics=p&limit=100", None).await;
    let sizes: Vec<usize> = pages.iter().map(|p| ids(p).len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(next(&pages[0]).as_deref(), Some(&*published[99]));
    assert_eq!(next(&pages[1]).as_deref(), Some(&*published[199]));
    assert_eq!(pages[2]["next"], Value::Null);
    let received: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(received, published, "every id once, in order");
    for page in &pages {
        assert!(page.get("gap").is_none(), "{page}");
    }
    // Each event is its envelope.
    let first = &pages[0]["events"][0];
    assert_eq!(first["topic"], "p");
    assert_eq!(first["data"], json!({ "n": 0 }));
    assert!(first["time"].is_string());
    // The end of history is the end: a poll after the last id is empty.
    let after_last = history(&hub, &format!("topics=p&after={}", published[249])).await;
    assert_eq!(after_last, json!({ "events": [], "next": null }));
}

#[tokio::test]
async fn after_an_id_in_the_middle_and_earliest_by_default() {
    let hub = Hub::start(&[]).await;
    let published = publish_all(&hub, &["m"; 30]).await;
    let page = history(&hub, &format!("topics=m&after={}", published[9])).await;
    assert_eq!(ids(&page), published[10..]);
    assert_eq!(page["next"], Value::Null);
    let page = history(&hub, &format!("topics=m&after={}&limit=5", published[9])).await;
    assert_eq!(ids(&page), published[10..15]);
    assert_eq!(next(&page).as_deref(), Some(&*published[14]));

    let default = history(&hub, "topics=m").await;
    assert_eq!(ids(&default), published, "no after: from the oldest");
    assert_eq!(history(&hub, "topics=m&after=earliest").await, default);
    let limited = history(&hub, "topics=m&limit=3").await;
    assert_eq!(ids(&limited), published[..3]);
    // Without `limit`, at most 100.
    let more = publish_all(&hub, &["m"; 90]).await;
    let default = history(&hub, "topics=m").await;
    assert_eq!(ids(&default).len(), 100);
    assert_eq!(next(&default).as_deref(), Some(&*more[69]));
}

#[tokio::test]
async fn patterns_select_topics_in_id_order_and_page_exactly() {
    let hub = Hub::start(&[]).await;
    let round = [
        "logs/a", "a", "b/x", "logs", "logs/b/c", "b", "b/x/y", "other", "ab",
    ];
    let topics: Vec<&str> = (0..40).flat_map(|_| round).collect();
    let published = publish_all(&hub, &topics).await;
    let expect = |wanted: &[&str]| -> Vec<String> {
        topics
            .iter()
            .zip(&published)
            .filter(|(t, _)| wanted.contains(t))
            .map(|(_, id)| id.clone())
            .collect()
    };

    let logs = history(&hub, "topics=logs/**&limit=1000").await;
    assert_eq!(ids(&logs), expect(&["logs/a", "logs/b/c"]));
    assert_eq!(logs["next"], Value::Null);
    let ab = history(&hub, "topics=a,b/*&limit=1000").await;
    assert_eq!(ids(&ab), expect(&["a", "b/x"]));
    for event in ab["events"].as_array().unwrap() {
        assert!(event["topic"] == "a" || event["topic"] == "b/x", "{event}");
    }
    // Repeated `topic=` adds up, as on a subscription.
    let repeated = history(&hub, "topic=a&topic=b/*&limit=1000").await;
    assert_eq!(repeated, ab);

    // Paging by 7 over the interleaved topics: full pages, then the rest.
    let pages = all_pages(&hub, "topics=a,b/*,logs/**&limit=7", None).await;
    let wanted = expect(&["a", "b/x", "logs/a", "logs/b/c"]);
    let received: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(received, wanted);
    for page in &pages[..pages.len() - 1] {
        assert_eq!(ids(page).len(), 7);
        let last = ids(page).last().cloned();
        assert_eq!(next(page), last, "next is the last event of a full page");
    }
    assert_eq!(pages.len(), wanted.len().div_ceil(7));
}

#[tokio::test]
async fn an_evicted_after_reports_the_gap_and_starts_at_the_oldest() {
    let hub = Hub::start(&["--history-max-events", "5"]).await;
    let published = publish_all(&hub, &["g", "g", "g", "x", "g", "g", "x", "g"]).await;
    // published[..3] are evicted; published[1] misses published[2].
    let page = history(&hub, &format!("topics=g&after={}", published[1])).await;
    assert_eq!(
        page["gap"],
        json!({ "requested": published[1], "oldest": published[3] })
    );
    assert_eq!(
        ids(&page),
        [&*published[4], &published[5], &published[7]],
        "matching events from the oldest retained"
    );
    assert_eq!(page["next"], Value::Null);
    // A gap on a page that stops at the limit: `next` goes on from there.
    let page = history(&hub, &format!("topics=g&after={}&limit=2", published[0])).await;
    assert_eq!(page["gap"]["requested"], published[0]);
    assert_eq!(ids(&page), [&*published[4], &published[5]]);
    assert_eq!(next(&page).as_deref(), Some(&*published[5]));
    let rest = history(&hub, &format!("topics=g&after={}", published[5])).await;
    assert!(rest.get("gap").is_none());
    assert_eq!(ids(&rest), [&*published[7]]);
    // The last evicted id missed nothing: no gap.
    let page = history(&hub, &format!("topics=g&after={}", published[2])).await;
    assert!(page.get("gap").is_none(), "{page}");
    // An id never issued by this hub is a gap too.
    let page = history(&hub, "topics=g&after=1-0").await;
    assert_eq!(
        page["gap"],
        json!({ "requested": "1-0", "oldest": published[3] })
    );
}

#[tokio::test]
async fn bad_requests_are_400_with_a_json_error() {
    let hub = Hub::start(&["--max-topics", "2"]).await;
    for (query, code) in [
        ("topics=a%20b", "invalid_topic"),
        ("topics=tr*", "invalid_topic"),
        ("topics=a/**/b", "invalid_topic"),
        ("", "no_topics"),
        ("topics=,,", "no_topics"),
        ("topics=a&after=nope", "invalid_after"),
        ("topics=a&after=12", "invalid_after"),
        ("topics=a&limit=0", "invalid_parameter"),
        ("topics=a&limit=1001", "invalid_parameter"),
        ("topics=a&limit=x", "invalid_parameter"),
        ("topics=a&limit=-1", "invalid_parameter"),
        ("topics=a,b,c", "too_many_topics"),
        ("topic=a&topic=b&topic=c/*", "too_many_topics"),
    ] {
        let (status, body) = hub.get_json(&format!("/history?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
    // Duplicates count once, and the limits are inclusive.
    history(&hub, "topics=a,b,a&limit=1000").await;
    history(&hub, "topics=a&limit=1").await;
}

#[tokio::test]
async fn another_method_is_405_and_the_index_lists_the_endpoint() {
    let hub = Hub::start(&[]).await;
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let response = client()
            .request(method.clone(), hub.at("/history?topics=a"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
    let (_, index) = hub.get_json("/").await;
    assert_eq!(
        index["endpoints"]["history"],
        "GET /history?topics={topics}&after={id}&limit={n}"
    );
}
