// Preloaded into Portkey's gateway by bench/run.sh (`node --import`): its start script calls
// `serve({fetch, port})` with no host, which listens on every interface. The benchmark must stay on
// loopback, so every server this process opens is bound to 127.0.0.1 instead.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length > 0 && typeof args[0] === "object" && args[0] !== null) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args[0];
    const rest = args.slice(1).filter((a) => typeof a === "function" || typeof a === "number");
    const cb = rest.find((a) => typeof a === "function");
    return cb ? listen.call(this, port, "127.0.0.1", cb) : listen.call(this, port, "127.0.0.1");
  }
  return listen.apply(this, args);
};
