//! The console page, in a real browser: headless Chromium (Debian's
//! `chromium`) driven by playwright-core (`tests/console/`, which `.ci/run`
//! installs with npm), against a running ringlb. The page updates itself:
//! a target whose backend stops turns unhealthy on it, a removed target
//! shows its drain counting down, the charts fill with traffic.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::page::Page;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_health_drains_and_traffic_as_they_happen() {
    let (a, b, c) = (
        Backend::tagged(1).await,
        Backend::tagged(2).await,
        Backend::tagged(3).await,
    );
    let a_addr = a.addr;
    // Probes to the traffic port every 200 ms; one failure takes a target out.
    let health =
        "protocol = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1";
    let lb = Ringlb::start(write_config(
        &health_config(1, "deregistration_delay = \"300s\"", health),
        &[("targets/web.txt", targets(&[a.addr, b.addr, c.addr]))],
    ));
    lb.wait_healthy(3);
    let Some(mut page) = Page::open(
        "ringlb",
        &format!("http://{}/", lb.admin),
        lb.dir.path(),
        &[a.addr.to_string(), b.addr.to_string()],
    ) else {
        return;
    };
    // Traffic throughout, so the charts have points by the end.
    let addr = lb.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // At most 10,000 connections and about 4 minutes; the pace
            // changes every 200 connections.
            for i in 0..10_000u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    drop(s);
                }
                let pause = 10 + (i / 200 % 4) * 10;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        })
    };
    page.expect("loaded");
    drop(a);
    lb.wait_log(
        &format!("target={a_addr} from=healthy to=unhealthy"),
        Duration::from_secs(5),
    );
    page.next();
    page.expect("unhealthy");
    // A connection to B, held open through B's drain.
    let mut held = None;
    for _ in 0..20 {
        let (s, tag) = connect_tagged(lb.addr()).await;
        if tag == 2 {
            held = Some(s);
            break;
        }
    }
    assert!(held.is_some(), "no connection reached B");
    replace_file(
        &lb.dir.path().join("targets/web.txt"),
        &targets(&[a_addr, c.addr]),
    );
    lb.wait_log("draining", Duration::from_secs(5));
    page.next();
    page.expect("draining");
    page.next();
    page.expect("chart");
    page.expect("events");
    page.expect("screenshot");
    page.finish();
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    drop(held);
    assert!(lb.stop().success());
}
