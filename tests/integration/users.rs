//! Users: every RPC and its error rows.

use sidb::proto as pb;
use tonic::Code;

use crate::common::*;

fn user(id: &str, v: Option<Vec<f32>>) -> pb::User {
    pb::User {
        id: id.into(),
        vector: v.map(|values| pb::Vector { values }),
        attributes: [("tier".to_string(), "gold".to_string())].into(),
        sid: None,
    }
}

fn upsert_users(users: Vec<pb::User>) -> pb::UpsertUsersRequest {
    pb::UpsertUsersRequest {
        collection: "c".into(),
        users,
        durability: 0,
    }
}

fn get(ids: &[&str], with_vectors: bool) -> pb::GetUsersRequest {
    pb::GetUsersRequest {
        collection: "c".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        with_vectors,
    }
}

#[tokio::test]
async fn upsert_get_delete() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut users = s.users().await;
    let w = users
        .upsert_users(upsert_users(vec![
            user("u1", Some(vec![0.5, -1.0])),
            user("u2", None),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.written, w.sequence), (2, 1));
    let got = users
        .get_users(get(&["u1", "u2", "u3"], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_ids, ["u3"]);
    assert_eq!(got.users[0].vector.clone().unwrap().values, [0.5, -1.0]);
    assert!(got.users[1].vector.is_none());
    assert_eq!(got.users[0].attributes["tier"], "gold");
    let bare = users
        .get_users(get(&["u1"], false))
        .await
        .unwrap()
        .into_inner();
    assert!(bare.users[0].vector.is_none(), "vectors only on request");
    assert_eq!(get_collection(&s, "c").await.user_count, 2);

    let del = pb::DeleteUsersRequest {
        collection: "c".into(),
        ids: vec!["u1".into()],
        durability: pb::Durability::Buffered as i32,
    };
    assert_eq!(
        users.delete_users(del).await.unwrap().into_inner().written,
        1
    );
    assert_eq!(get_collection(&s, "c").await.user_count, 1);
}

#[tokio::test]
async fn error_rows() {
    let s = TestServer::start().await;
    create(&s, "c").await;
    let mut users = s.users().await;
    assert_status(
        users
            .upsert_users(upsert_users(vec![user("u", Some(vec![1.0]))]))
            .await,
        Code::InvalidArgument,
        "users[0].vector: expected 2 values, got 1",
    );
    assert_status(
        users
            .upsert_users(upsert_users(vec![
                user("ok", None),
                user("u", Some(vec![1.0, f32::INFINITY])),
            ]))
            .await,
        Code::InvalidArgument,
        "users[1].vector[1]: inf is not a finite number",
    );
    assert_status(
        users.upsert_users(upsert_users(vec![user("", None)])).await,
        Code::InvalidArgument,
        "users[0].id: must not be empty",
    );
    assert_status(
        users.upsert_users(upsert_users(vec![])).await,
        Code::InvalidArgument,
        "users: 0 entries",
    );
    let mut sid = user("s", None);
    sid.sid = Some(pb::SemanticId {
        codes: vec![1, 2],
        suffix: 0,
        model_version: 0,
    });
    assert_status(
        users.upsert_users(upsert_users(vec![sid])).await,
        Code::InvalidArgument,
        "users[0].sid.codes: expected 3 codes",
    );
    let mut req = upsert_users(vec![user("x", None)]);
    req.collection = "missing".into();
    assert_status(users.upsert_users(req).await, Code::NotFound, "\"missing\"");
    assert_status(
        users.get_users(get(&[], false)).await,
        Code::InvalidArgument,
        "ids: 0 entries",
    );
    assert_eq!(
        get_collection(&s, "c").await.user_count,
        0,
        "no rejected user was written"
    );

    // A collection whose users carry no vector rejects one.
    s.collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: "novec".into(),
            config: Some(config(4, 0)),
        })
        .await
        .unwrap();
    let mut req = upsert_users(vec![user("x", Some(vec![1.0]))]);
    req.collection = "novec".into();
    assert_status(
        users.upsert_users(req).await,
        Code::InvalidArgument,
        "users[0].vector: the collection has user_dim 0",
    );
}
