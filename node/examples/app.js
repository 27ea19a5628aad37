// The README's example: an Express app with shoal rate limits and sessions.
//
//   ./scripts/dev --config node/examples/shoal.toml      # in one terminal
//   node node/examples/app.js                            # in another
//   curl -i -X POST 'http://localhost:3000/login?user=alice' -c jar -b jar
//   curl -i http://localhost:3000/me -c jar -b jar
//   curl -i -X POST http://localhost:3000/logout -c jar -b jar
//
// `createApp(client)` builds the app without listening, for tests.
'use strict';

const express = require('express');
const { Client } = require('shoal-client');
const { rateLimit, session } = require('shoal-client/express');

function createApp(client) {
  const app = express();

  // Every route: 5 requests per 10 s per API key (policy "api"), with the
  // draft-8 RateLimit headers and the X-RateLimit-* ones.
  app.use(
    rateLimit({
      client,
      policy: 'api',
      key: (req) => req.get('x-api-key') ?? req.socket.remoteAddress,
      standardHeaders: 'draft-8',
    }),
  );
  // Sessions from the __Host-session cookie, shared by every replica.
  app.use(session({ client }));

  const loginLimit = rateLimit({ client, policy: 'login', key: (req) => req.socket.remoteAddress });
  app.post('/login', loginLimit, (req, res, next) => {
    // A new session on login (no fixation); saved when the response ends.
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user = String(req.query.user ?? 'guest');
      req.session.visits = 0;
      res.json({ hello: req.session.user });
    });
  });

  app.get('/me', (req, res) => {
    if (typeof req.session.user !== 'string') return res.status(401).json({ error: 'log in first' });
    req.session.visits += 1; // saved before the response goes out
    res.json({ user: req.session.user, visits: req.session.visits });
  });

  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.json({ bye: true })));
  });

  // "Sign out everywhere": every replica refuses the user's sessions at once.
  app.post('/logout-everywhere', async (req, res, next) => {
    try {
      if (typeof req.session.user !== 'string') return res.status(401).end();
      const revoked = await client.sessionRevokeUser(req.session.user);
      res.json({ revoked });
    } catch (e) {
      next(e);
    }
  });

  // Cache-aside with one loader for the whole fleet.
  app.get('/products/:id', async (req, res, next) => {
    try {
      const product = await client.getOrLoad(
        `product:${req.params.id}`,
        async () => ({ id: req.params.id, name: `Product ${req.params.id}`, loadedAt: Date.now() }),
        { ttlMs: 60_000 },
      );
      res.json(product);
    } catch (e) {
      next(e);
    }
  });

  return app;
}

module.exports = { createApp };

if (require.main === module) {
  (async () => {
    const client = await Client.connect(process.env.SHOAL_SOCKET ?? './shoal.sock');
    const port = Number(process.env.PORT ?? 3000);
    createApp(client).listen(port, () => console.log(`listening on http://localhost:${port}`));
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
