// Reads COUNT events from partition 0 of the Event Hubs-compatible endpoint (CERTHUB_EVENT_HUB)
// from the earliest position with @azure/event-hubs, then prints `read N in S s`. Used by
// bench/eventhub-read.sh.
'use strict';

const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');

const COUNT = Number(process.env.COUNT);
const client = new EventHubConsumerClient('$Default', process.env.CERTHUB_EVENT_HUB);
let read = 0;
const start = process.hrtime.bigint();
const subscription = client.subscribe(
  '0',
  {
    processEvents: async (events) => {
      read += events.length;
      if (read >= COUNT) {
        const s = Number(process.hrtime.bigint() - start) / 1e9;
        console.log(`read ${read} in ${s.toFixed(2)} s`);
        await subscription.close();
        await client.close();
        process.exit(0);
      }
    },
    processError: async (err) => {
      console.error(`error: ${err.name} ${err.message}`);
    },
  },
  { startPosition: earliestEventPosition, maxBatchSize: 1000, maxWaitTimeInSeconds: 1, prefetchCount: 3000 },
);
