//! Group commit's one rule, shared by the writer and the completer: wait for the first request,
//! then take every request already queued behind it, up to a bound.

use tokio::sync::mpsc;

/// The next group: `None` once every sender is gone. `weight` is a request's share of `max`
/// (mutations, outcomes); the first request is taken whatever its weight.
pub async fn next_group<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    max: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut size = weight(&first);
    let mut group = vec![first];
    while size < max {
        let Ok(next) = rx.try_recv() else { break };
        size += weight(&next);
        group.push(next);
    }
    Some(group)
}
