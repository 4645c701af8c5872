//! Read-ahead of a paged listing. Graph's pages are a chain (each next link is in the previous page), and
//! the sync engine asks for the next page only after it has queued the follow-ups of the previous one, so
//! a long listing (100,000 users) would advance at the engine's pace, not the network's. A [`Chain`] walks
//! the listing in a background task, at most [`AHEAD`] pages ahead, and hands pages out in order.
//!
//! Invariant: a page is returned only for the URL it was fetched from; on any mismatch or error the chain
//! is dropped and the page is fetched directly, so retries and resumed syncs behave exactly as without it.

use steward_msgraph::{Client, Error, ODataPage};
use tokio::sync::{Mutex, mpsc};

/// Pages fetched ahead of the engine at most (listings page at 999: two pages ahead hide a round trip
/// without holding thousands of parsed objects).
pub const AHEAD: usize = 2;

type Item = (String, Result<ODataPage, Error>);

/// See the module docs.
#[derive(Default)]
pub struct Chain {
    rx: Mutex<Option<mpsc::Receiver<Item>>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chain")
    }
}

impl Chain {
    /// The page at `url`: from the read-ahead if it is there, else fetched (and the read-ahead restarted
    /// from here).
    pub async fn page(&self, g: &Client, url: &str) -> Result<ODataPage, Error> {
        let mut guard = self.rx.lock().await;
        if guard.is_none() {
            *guard = Some(start(g.clone(), url.to_owned()));
        }
        if let Some(rx) = guard.as_mut()
            && let Some((u, r)) = rx.recv().await
            && u == url
        {
            if r.is_err() {
                *guard = None;
            }
            return r;
        }
        *guard = None;
        drop(guard);
        g.get_page(url, false).await
    }
}

fn start(g: Client, first: String) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel::<Item>(AHEAD);
    tokio::spawn(async move {
        let mut url = first;
        loop {
            let r = g.get_page(&url, false).await;
            let next = r.as_ref().ok().and_then(|p| p.next_link.clone());
            if tx.send((url, r)).await.is_err() {
                return;
            }
            match next {
                Some(n) => url = n,
                None => return,
            }
        }
    });
    rx
}
