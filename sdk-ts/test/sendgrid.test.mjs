// @sendgrid/mail against a loopback stand-in for the SendGrid API (pointed at it with the
// client's supported setting, `client.setDefaultRequest("baseUrl", ...)`): one kind:email
// event per message, target sendgrid, the API key never recorded, a 4xx recorded as an error.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { assertValid, removeDir, runScript, schemaValidator, startHttp, startRedis, userProject } from "./helpers.mjs";

describe("@sendgrid/mail", () => {
  let redis, sendgrid, dir, run, events, validate;

  before(async () => {
    redis = await startRedis();
    sendgrid = await startHttp((req, res, body) => {
      const mail = JSON.parse(body.toString() || "{}");
      if (mail.subject === "reject me") {
        res.writeHead(400, { "content-type": "application/json" });
        return res.end(JSON.stringify({ errors: [{ message: "The from address does not match a verified Sender Identity.", field: "from" }] }));
      }
      res.writeHead(202, { "x-message-id": "msg-" + sendgrid.requests.length });
      res.end();
    });
    dir = userProject();
    run = await runScript(dir, "mail.mjs", `
      import sgMail from "@sendgrid/mail";
      import { init, trace } from "@tracelab/sdk";
      init({ workflowName: "ts-mail", serviceName: "mailer" });
      sgMail.setApiKey("SG.PLANTED_SENDGRID_KEY");
      sgMail.client.setDefaultRequest("baseUrl", process.env.SENDGRID_URL);
      const out = {};
      const [response] = await trace("notify", () => sgMail.send({
        to: "alice@example.com", from: { email: "bot@example.com", name: "Bot" },
        subject: "Your report", text: "Hello Alice, password: hunter2",
      }));
      out.status = response.statusCode;
      const many = await sgMail.send([
        { to: "b@example.com", from: "bot@example.com", subject: "one", text: "1" },
        { to: ["c@example.com", "d@example.com"], from: "bot@example.com", subject: "two", html: "<p>2</p>" },
      ]);
      out.many = many.map(([r]) => r.statusCode);
      try {
        await sgMail.send({ to: "e@example.com", from: "nobody@example.com", subject: "reject me", text: "x" });
      } catch (err) {
        out.rejected = err.code;
      }
      console.log(JSON.stringify(out));
    `, { TRACELAB_REDIS_URL: redis.url, SENDGRID_URL: sendgrid.url });
    events = (await redis.events()).map((e) => e.event);
    validate = await schemaValidator();
  });

  after(async () => {
    await sendgrid?.close();
    await redis?.stop();
    if (dir) removeDir(dir);
  });

  it("sends through the stand-in unchanged", () => {
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout.trim()), { status: 202, many: [202, 202], rejected: 400 });
    assert.equal(sendgrid.requests.length, 4);
    assert.equal(sendgrid.requests[0].url, "/v3/mail/send");
    assert.equal(sendgrid.requests[0].headers.authorization, "Bearer SG.PLANTED_SENDGRID_KEY");
  });

  it("records one email event per message and no HTTP event beneath", () => {
    const emails = events.filter((e) => e.kind === "email");
    assert.equal(emails.length, 4);
    assert.equal(events.filter((e) => e.kind === "http").length, 0);
    for (const e of emails) {
      assert.equal(e.target, "sendgrid");
      assert.equal(e.endpoint, "mail.send");
      assert.equal(e.source, "sdk-ts");
      assertValid(validate, e);
    }
    const [first] = emails;
    assert.deepEqual(first.request.to, ["alice@example.com"]);
    assert.equal(first.request.from, "Bot <bot@example.com>");
    assert.equal(first.request.subject, "Your report");
    assert.equal(first.request.body, "Hello Alice, password: hunter2");
    assert.equal(first.status, "ok");
    assert.equal(first.status_code, 202);
    assert.equal(first.response.status_code, 202);
    const span = events.find((e) => e.endpoint === "notify");
    assert.equal(first.parent_id, span.span_id);
    const two = emails.find((e) => e.request.subject === "two");
    assert.deepEqual(two.request.to, ["c@example.com", "d@example.com"]);
    assert.equal(two.request.body, "<p>2</p>");
  });

  it("records a rejected send as an error with the API's status and body", () => {
    const e = events.find((ev) => ev.request?.subject === "reject me");
    assert.equal(e.status, "error");
    assert.equal(e.status_code, 400);
    assert.equal(e.error.type, "ResponseError");
    assert.match(JSON.stringify(e.response.body), /verified Sender Identity/);
  });

  it("never records the API key", async () => {
    const raw = (await redis.rawEntries()).map(([, fields]) => Buffer.concat(fields)).join("");
    assert.equal(raw.includes("PLANTED"), false);
  });
});
