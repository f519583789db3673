// Shared by the examples in this folder: where to listen, and saying so.
//
//   PORT=8080 node examples/ws/broadcast-all.mjs     (PORT=0: any free port)
//
// Each example prints `listening on <port>` once it accepts connections.

export const port = process.env.PORT === undefined ? 8080 : Number(process.env.PORT)

export function announce(address) {
  console.log(`listening on ${address.port}`)
}
