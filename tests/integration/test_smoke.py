from tests.support.world import PASSWORD


def test_login_and_me(client, world):
    r = client.post("/api/v1/auth/login", json={"email": world.platform["ops_admin"].email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert me.json()["user"]["platform_role"] == "ops_admin"
