// The course practical's k6 scenario, scaled: ramping virtual users listing
// todos and checking "status was 200". The course ramps to 1,000 users over
// a minute, then to 5,000 over ten; this keeps that shape (a first stage, then
// five times the users over ten times as long), sized by environment
// variables so it fits a 2-core machine and a big one:
//   k6 run -e TARGET=http://127.0.0.1:8080 -e VUS=100 -e DURATION=6s bench/k6/seed.js
// TARGET: base URL; VUS: users at the end of the first stage (five times as
// many at the end of the second); DURATION: the first stage (the second is
// ten times as long).
import http from 'k6/http';
import { check, sleep } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const VUS = parseInt(__ENV.VUS || '100');
const DURATION = __ENV.DURATION || '6s';
const SECONDS = parseInt(DURATION);

export const options = {
  stages: [
    { duration: DURATION, target: VUS },
    { duration: `${SECONDS * 10}s`, target: VUS * 5 },
  ],
};

export function setup() {
  console.log(`seed.js: TARGET=${TARGET}: ${VUS} users over ${DURATION}, then ${VUS * 5} over ${SECONDS * 10}s`);
}

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
  sleep(1);
}
