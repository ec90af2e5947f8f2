//! The tickets asked for, as they are now (GetUnbindTickets), until each has ended.

use super::*;

/// The visit's tickets as they are now. Once the session has ended they are read by id alone
/// (the portal's tenant may read its own tickets), so the page can be followed to the end.
pub(super) async fn load_tickets(
    p: &Portal,
    v: &Visitor,
    visit: &Mutex<Visit>,
) -> Result<Vec<UnbindTicket>, Notice> {
    let (ids, token) = {
        let visit = lock(visit);
        let live = visit
            .session
            .as_ref()
            .filter(|s| s.expires_at.is_none_or(|at| at > Utc::now()))
            .map(|s| s.token.0.clone());
        (visit.tickets.clone(), live.unwrap_or_default())
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = p.client.clone();
    let ask = |session_token: String| GetUnbindTicketsRequest {
        session_token,
        ticket_ids: ids.clone(),
    };
    let answer = match client
        .get_unbind_tickets(call(ask(token.clone()), CALL_TIMEOUT, &v.gateway_name))
        .await
    {
        Err(status)
            if !token.is_empty()
                && crate::api::error::reason_of(&status).as_deref() == Some("INVALID_SESSION") =>
        {
            client
                .get_unbind_tickets(call(ask(String::new()), CALL_TIMEOUT, &v.gateway_name))
                .await
        }
        other => other,
    };
    match answer {
        Ok(answer) => Ok(answer.into_inner().tickets),
        Err(status) => {
            p.log_failure("GetUnbindTickets", &status);
            Err(notice::from_status(&status).0)
        }
    }
}

pub(super) async fn tickets_page(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return see_other("/");
    };
    let (notice, visiting) = notice_of(Some(&visit));
    let has_session = lock(&visit).session.is_some();
    let (tickets, failed) = match load_tickets(&p, &v, &visit).await {
        Ok(tickets) => (tickets, None),
        Err(notice) => (Vec::new(), Some(notice)),
    };
    let view = tickets_view(&tickets, v.locale.messages(), p.tz);
    let page = Page {
        refresh: (!view.done && (failed.is_some() || !tickets.is_empty()))
            .then_some(REFRESH_TICKETS),
        ..Page::new("tickets.html", "tickets.heading", "/tickets").step(4)
    };
    p.page(
        &v,
        page,
        notice.or(failed),
        visiting,
        context! { view => Value::from(Serde(&view)), has_session => has_session },
    )
}

pub(super) async fn tickets_live(
    State(p): State<Shared>,
    Extension(v): Extension<Visitor>,
) -> Response {
    let Some(visit) = p.visits.get(&v.id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match load_tickets(&p, &v, &visit).await {
        Ok(tickets) => {
            let view = tickets_view(&tickets, v.locale.messages(), p.tz);
            let ctx = context! { lang => v.locale.tag(), view => Value::from(Serde(&view)) };
            p.html(StatusCode::OK, "tickets_live.html", ctx, &v)
        }
        // The script tries again a little later.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
